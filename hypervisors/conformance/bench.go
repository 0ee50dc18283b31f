package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/hypervisors/criu"
	"github.com/ckpt-dev/ckpt/internal/testenv"
	"github.com/ckpt-dev/ckpt/internal/workloads"
	"github.com/ckpt-dev/ckpt/memregion"
)

// Seal records in r a manifest of the one workload w, whose Dump wrote
// every object of r and returned recipe, and seals it.
func Seal(ctx context.Context, r *memregion.Region, w hypervisors.Workload, recipe json.RawMessage) error {
	var names []string
	for _, o := range r.Objects() {
		names = append(names, o.Name)
	}
	m := &memregion.Manifest{Workloads: []memregion.WorkloadRecord{{
		ID: w.ID, Kind: w.Kind, Backend: w.Backend, MemoryBytes: w.MemoryBytes, Objects: names, Restore: recipe}}}
	return r.Seal(ctx, m)
}

// BenchMode is one way of suspending a container, for BenchDumpRestore.
type BenchMode struct {
	Name    string
	Backend hypervisors.Backend
	// Start starts a fresh container with mib MiB of memory, removed at
	// cleanup, and returns its workload ID.
	Start func(b *testing.B, mib int) string
}

// RuncMode is the baseline: the criu backend on a bare runc container,
// CRIU writing into the region in place.
func RuncMode(b *testing.B) BenchMode {
	root := filepath.Join(b.TempDir(), "runc")
	r, err := criu.New(context.Background(), criu.Config{Runc: testenv.RequireTool(b, "runc"), CRIU: testenv.RequireTool(b, "criu"),
		RuncRoot: root, WorkDir: b.TempDir(), LogDir: b.TempDir()}, nil)
	if err != nil {
		b.Fatal(err)
	}
	return BenchMode{Name: "runc", Backend: r, Start: func(b *testing.B, mib int) string {
		return workloads.StartContainer(b, root, workloads.Checkpointable, mib).ID
	}}
}

// BenchDumpRestore measures, side by side in one run on containers of mib
// MiB, each mode's Dump (after its Freeze) into a directory region on /dev/shm
// and its Restore, with a memcpy of the same bytes; it reports GB/s and
// milliseconds of each.
func BenchDumpRestore(b *testing.B, mib int, modes ...BenchMode) {
	for _, mode := range modes {
		b.Run(fmt.Sprintf("mem=%dMiB/%s", mib, mode.Name), func(b *testing.B) {
			ctx := context.Background()
			be := mode.Backend
			var dumpT, restoreT, memcpyT time.Duration
			var bytes int64
			for range b.N {
				b.StopTimer()
				w := hypervisors.Workload{ID: mode.Start(b, mib), Backend: be.Name(), Kind: "container"}
				r := testenv.Region(b, "/dev/shm", memregion.KindDir, 0)
				b.StartTimer()
				if err := be.Freeze(ctx, w); err != nil {
					b.Fatal(err)
				}
				start := time.Now()
				raw, err := be.Dump(ctx, w, hypervisors.RegionSink{Region: r, Prefix: w.ID})
				if err != nil {
					be.Thaw(ctx, w)
					b.Fatal(err)
				}
				dumpT += time.Since(start)
				b.StopTimer()
				for _, o := range r.Objects() {
					bytes += o.Size
				}
				if err := Seal(ctx, r, w, raw); err != nil {
					b.Fatal(err)
				}
				if err := be.Finish(ctx, w); err != nil {
					b.Fatal(err)
				}
				m, err := r.Verify(ctx)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				start = time.Now()
				if err := be.Restore(ctx, w, raw, hypervisors.RegionSource{Region: r, Manifest: m, Prefix: w.ID}); err != nil {
					b.Fatal(err)
				}
				restoreT += time.Since(start)
				b.StopTimer()
				memcpyT += testenv.MemcpyTime(int64(mib) << 20)
			}
			gbps := func(d time.Duration) float64 { return float64(bytes) / d.Seconds() / 1e9 }
			b.ReportMetric(gbps(dumpT), "dump-GB/s")
			b.ReportMetric(gbps(restoreT), "restore-GB/s")
			b.ReportMetric(float64(int64(b.N)*int64(mib)<<20)/memcpyT.Seconds()/1e9, "memcpy-GB/s")
			b.ReportMetric(dumpT.Seconds()/float64(b.N)*1e3, "dump-ms")
			b.ReportMetric(restoreT.Seconds()/float64(b.N)*1e3, "restore-ms")
		})
	}
}
