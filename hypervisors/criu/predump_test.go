package criu_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/internal/testenv"
	"github.com/ckpt-dev/ckpt/internal/workloads"
	"github.com/ckpt-dev/ckpt/memregion"
)

// This host's kernel has no CONFIG_MEM_SOFT_DIRTY, so CRIU cannot track
// dirty pages here and these tests skip; integration's TestCRIUInGuest runs
// them inside a QEMU guest on Debian's kernel, which has it.

// dirtyMiBps is how fast the pre-dump workloads rewrite their memory
// (CKPT_BENCH_DIRTY overrides it, in MiB/s).
func dirtyMiBps() int {
	if v, err := strconv.Atoi(os.Getenv("CKPT_BENCH_DIRTY")); err == nil && v > 0 {
		return v
	}
	return 64
}

// written asks testload how many page rewrites it has made.
func written(t testing.TB, c *workloads.Container) int64 {
	t.Helper()
	a, err := c.Ask("written")
	if err != nil {
		t.Fatalf("written: %v", err)
	}
	var n int64
	if _, err := fmt.Sscanf(a, "written %d pages", &n); err != nil {
		t.Fatalf("written: %q: %v", a, err)
	}
	return n
}

func preDumpOrSkip(t testing.TB, be hypervisors.PreDumper, w hypervisors.Workload, dst hypervisors.ObjectSink) {
	t.Helper()
	err := be.PreDump(context.Background(), w, dst)
	if errors.Is(err, hypervisors.ErrNotSupported) {
		t.Skipf("skipped: this kernel cannot track dirty pages, so CRIU cannot pre-dump (%v); integration's TestCRIUInGuest runs this in a guest that can", err)
	}
	if err != nil {
		t.Fatalf("PreDump: %v", err)
	}
}

// TestPreDumpKeepsLaterWrites pre-dumps a container that keeps rewriting
// random pages of its memory, lets it write on, then freezes and dumps it:
// after the restore every page must hold what was last written to it (a
// page changed after the pre-dump and missed by the final dump would come
// back stale and fail its checksum).
func TestPreDumpKeepsLaterWrites(t *testing.T) {
	root := filepath.Join(t.TempDir(), "runc")
	be, logs := newBackendLogs(t, root)
	ctx := context.Background()
	c := workloads.StartContainerArgs(t, root, workloads.Checkpointable, testMemMiB, "-dirty", strconv.Itoa(dirtyMiBps()))
	w := hypervisors.Workload{ID: c.ID, Kind: "container", Backend: be.Name()}
	r := testenv.Region(t, "/dev/shm", memregion.KindDir, 0)
	sink := hypervisors.RegionSink{Region: r, Prefix: w.ID}
	preDumpOrSkip(t, be, w, sink)
	before := written(t, c)
	time.Sleep(time.Second)
	if err := be.Freeze(ctx, w); err != nil {
		t.Fatal(err)
	}
	rec, err := be.Dump(ctx, w, sink)
	if err != nil {
		be.Thaw(ctx, w)
		t.Fatalf("Dump: %v", err)
	}
	m := &memregion.Manifest{}
	if err := r.Seal(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := be.Finish(ctx, w); err != nil {
		t.Fatal(err)
	}
	if m, err = r.Manifest(); err != nil {
		t.Fatal(err)
	}
	if err := be.Restore(ctx, w, rec, hypervisors.RegionSource{Region: r, Manifest: m, Prefix: w.ID}); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	after := written(t, c)
	if after <= before {
		t.Fatalf("the workload wrote %d pages before the pre-dump finished and %d after the restore: the writes made after the pre-dump were lost", before, after)
	}
	(&probe{c: c, logDir: logs}).Intact(t)
	t.Logf("%d page rewrites before the freeze, %d after the restore; every page intact", before, after)
}

// BenchmarkPreDump measures what pre-dump is for: how much shorter the
// frozen window (freeze, then dump into a tmpfs-backed region) is when most
// memory was copied while the container ran. Each iteration suspends two
// identical containers that keep rewriting random pages, one without and
// one with a pre-dump, and reports both windows, their ratio, the pages
// CRIU wrote while frozen, and the pre-dump's own (running) time. The
// writes land anywhere in memory ("writes=all") or within the first
// eighth ("writes=hot"): with transparent huge pages (Debian's default is
// "always") soft-dirty tracking marks a whole 2 MiB page dirty, so random
// writes everywhere soon dirty all of it again.
func BenchmarkPreDump(b *testing.B) {
	for _, mib := range benchSizes() {
		for _, hot := range []int{0, mib / 8} {
			name := fmt.Sprintf("mem=%dMiB/writes=all", mib)
			if hot > 0 {
				name = fmt.Sprintf("mem=%dMiB/writes=hot%dMiB", mib, hot)
			}
			b.Run(name, func(b *testing.B) { benchPreDump(b, mib, hot) })
		}
	}
}

func benchPreDump(b *testing.B, mib, hot int) {
	root := filepath.Join(b.TempDir(), "runc")
	be := newBackendTB(b, root)
	if !be.CanPreDump() {
		b.Skip("skipped: this kernel cannot track dirty pages, so CRIU cannot pre-dump; integration's TestCRIUInGuest runs this benchmark in a guest that can")
	}
	ctx := context.Background()
	var frozen, pages [2]float64
	var pre time.Duration
	var rewrites float64
	for range b.N {
		for i, withPre := range []bool{false, true} {
			b.StopTimer()
			c := workloads.StartContainerArgs(b, root, workloads.Checkpointable, mib,
				"-dirty", strconv.Itoa(dirtyMiBps()), "-hot", strconv.Itoa(hot))
			w := hypervisors.Workload{ID: c.ID, Kind: "container", Backend: be.Name()}
			// Dropped after each pass: a 1 GiB benchmark's regions would
			// otherwise pile up in memory until it ends.
			r, drop := testenv.TempRegion(b, "/dev/shm", memregion.KindDir, 0)
			sink := hypervisors.RegionSink{Region: r, Prefix: w.ID}
			b.StartTimer()
			w0 := written(b, c)
			if withPre {
				start := time.Now()
				preDumpOrSkip(b, be, w, sink)
				pre += time.Since(start)
				rewrites += float64(written(b, c)-w0) / time.Since(start).Seconds()
			}
			start := time.Now()
			if err := be.Freeze(ctx, w); err != nil {
				b.Fatal(err)
			}
			rec, err := be.Dump(ctx, w, sink)
			if err != nil {
				be.Thaw(ctx, w)
				b.Fatal(err)
			}
			frozen[i] += time.Since(start).Seconds()
			var st struct {
				Stats struct {
					Pages float64 `json:"pages_written"`
				} `json:"stats"`
			}
			json.Unmarshal(rec, &st)
			pages[i] += st.Stats.Pages
			b.StopTimer()
			be.Finish(ctx, w)
			drop()
			b.StartTimer()
		}
	}
	n := float64(b.N)
	b.ReportMetric(frozen[0]/n*1e3, "frozen-ms-direct")
	b.ReportMetric(frozen[1]/n*1e3, "frozen-ms-predump")
	b.ReportMetric(frozen[0]/frozen[1], "frozen-ratio")
	b.ReportMetric(pages[0]/n, "frozen-pages-direct")
	b.ReportMetric(pages[1]/n, "frozen-pages-predump")
	b.ReportMetric(pre.Seconds()/n*1e3, "predump-ms")
	b.ReportMetric(rewrites/n*4096/(1<<20), "rewrite-MiB/s")
}
