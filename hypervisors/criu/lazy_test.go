package criu_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/hypervisors/criu"
	"github.com/ckpt-dev/ckpt/internal/testenv"
	"github.com/ckpt-dev/ckpt/internal/workloads"
	"github.com/ckpt-dev/ckpt/memregion"
)

// suspended freezes and dumps c into a fresh directory region on tmpfs,
// ends the original and returns what restores it, with the dump's time.
func suspended(t testing.TB, be *criu.Runtime, c *workloads.Container) (hypervisors.Workload, json.RawMessage, hypervisors.RegionSource, time.Duration) {
	t.Helper()
	ctx := context.Background()
	w := hypervisors.Workload{ID: c.ID, Kind: "container", Backend: criu.Name}
	r := testenv.Region(t, "/dev/shm", memregion.KindDir, 0)
	if err := be.Freeze(ctx, w); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rec, err := be.Dump(ctx, w, hypervisors.RegionSink{Region: r, Prefix: w.ID})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if err := r.Seal(ctx, &memregion.Manifest{}); err != nil {
		t.Fatal(err)
	}
	if err := be.Finish(ctx, w); err != nil {
		t.Fatal(err)
	}
	m, err := r.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	return w, rec, hypervisors.RegionSource{Region: r, Manifest: m, Prefix: w.ID}, took
}

// TestLazyRestore restores a container lazily: it answers once RestoreLazy
// returns, and once wait says every page is in, its memory and its child
// are intact and runc manages it.
func TestLazyRestore(t *testing.T) {
	root := filepath.Join(t.TempDir(), "runc")
	be, logs := newBackendLogs(t, root)
	c := workloads.StartContainer(t, root, workloads.Checkpointable, testMemMiB)
	w, rec, src, _ := suspended(t, be, c)
	var daemon int
	defer criu.OnLazyStarted(func(pid int) { daemon = pid })()
	wait, err := be.RestoreLazy(context.Background(), w, rec, src)
	if err != nil {
		t.Fatal(err)
	}
	if daemon == 0 {
		t.Fatal("RestoreLazy returned without starting a lazy-pages daemon")
	}
	if tick, err := c.Ask("tick"); err != nil || !strings.HasPrefix(tick, "tick ") {
		t.Fatalf("restored lazily, the container does not answer: %q, %v", tick, err)
	}
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(daemon, 0); err == nil {
		t.Errorf("wait returned while the lazy-pages daemon (pid %d) still runs", daemon)
	}
	(&probe{c: c, logDir: logs}).Intact(t)
}

// TestLazyRestoreDaemonDies kills the lazy-pages daemon while a container
// that keeps checksumming its memory (1 GiB) is still getting its pages:
// the container must be killed, never run on the zeros an abandoned
// userfaultfd gives (testload would print "sum BAD"), and the images must
// restore it again, intact. The kill comes two seconds after the daemon's
// death: the container must not run meanwhile.
func TestLazyRestoreDaemonDies(t *testing.T) {
	root := filepath.Join(t.TempDir(), "runc")
	be, logs := newBackendLogs(t, root)
	c := workloads.StartContainerArgs(t, root, workloads.Checkpointable, 1024, "-sum-every", "100ms")
	w, rec, src, _ := suspended(t, be, c)
	var daemon int
	defer criu.OnLazyStarted(func(pid int) { daemon = pid })()
	// Two seconds between the daemon's death and the kill: testload's
	// checksum of 1 GiB would see zeros in that time.
	defer criu.DelayLazyKill(2 * time.Second)()
	wait, err := be.RestoreLazy(context.Background(), w, rec, src)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(-daemon, syscall.SIGKILL); err != nil {
		t.Fatalf("killing the lazy-pages daemon: %v", err)
	}
	err = wait()
	if err == nil {
		t.Fatal("wait = nil after the lazy-pages daemon was killed")
	}
	t.Logf("wait: %v", err)
	if _, err := c.Ask("tick"); err == nil {
		t.Fatal("the container still answers after its lazy-pages daemon died")
	}
	time.Sleep(200 * time.Millisecond) // the log shim writes what the container wrote last
	log, _ := os.ReadFile(filepath.Join(logs, c.ID+".log"))
	// The restored container's log holds all it wrote: ticks and good
	// sums only. Run on zeros, it would show "sum BAD", or the Go
	// runtime's SIGSEGV (what it showed with the copies not held).
	for _, l := range strings.Split(strings.TrimSpace(string(log)), "\n") {
		if _, tick := workloads.ParseTick(l); !tick && !strings.HasPrefix(l, "sum OK") && l != "" {
			t.Fatalf("the container ran on missing pages before it was killed: %q in its log:\n%s", l, log)
		}
	}
	if err := be.Restore(context.Background(), w, rec, src); err != nil {
		t.Fatalf("restoring again from the kept images: %v", err)
	}
	(&probe{c: c, logDir: logs}).Intact(t)
}

// BenchmarkLazyRestore restores the same images of one container twice
// per iteration, in full and then lazily, and reports how long after the
// restore began the container first answered (testload's "tick", which
// touches little of its memory): restore-first-answer-s and
// lazy-first-answer-s, their ratio (the goal: lazy within 10 % of the
// full restore) and lazy-pages-in-s, when the last page was in. The rates
// (GB/s of image bytes) of the dump, the full restore (until it answers)
// and the lazy one (until every page is in) come from the same runs.
func BenchmarkLazyRestore(b *testing.B) {
	for _, mib := range benchSizes() {
		b.Run(fmt.Sprintf("mem=%dMiB", mib), func(b *testing.B) { benchLazyRestore(b, mib) })
	}
}

func benchLazyRestore(b *testing.B, mib int) {
	root := filepath.Join(b.TempDir(), "runc")
	be := newBackendTB(b, root)
	ctx := context.Background()
	var dumpT, fullT, lazyT, pagesT time.Duration
	var bytes int64
	answer := func(c *workloads.Container, start time.Time) time.Duration {
		for {
			if _, err := c.Ask("tick"); err == nil {
				return time.Since(start)
			}
			if time.Since(start) > time.Minute {
				b.Fatalf("%s does not answer after its restore", c.ID)
			}
			time.Sleep(time.Millisecond)
		}
	}
	remove := func(c *workloads.Container) {
		if out, err := exec.Command(testenv.RequireTool(b, "runc"), "--root", root, "delete", "--force", c.ID).CombinedOutput(); err != nil {
			b.Fatalf("runc delete: %v: %s", err, out)
		}
	}
	for range b.N {
		b.StopTimer()
		c := workloads.StartContainer(b, root, workloads.Checkpointable, mib)
		w, rec, src, took := suspended(b, be, c)
		dumpT += took
		bytes += src.Manifest.TotalBytes()
		b.StartTimer()
		start := time.Now()
		if err := be.Restore(ctx, w, rec, src); err != nil {
			b.Fatal(err)
		}
		fullT += answer(c, start)
		b.StopTimer()
		remove(c)
		b.StartTimer()
		start = time.Now()
		wait, err := be.RestoreLazy(ctx, w, rec, src)
		if err != nil {
			b.Fatal(err)
		}
		lazyT += answer(c, start)
		if err := wait(); err != nil {
			b.Fatal(err)
		}
		pagesT += time.Since(start)
		b.StopTimer()
		if sum, err := c.Ask("sum"); err != nil || !strings.HasPrefix(sum, "sum OK") {
			b.Fatalf("memory after the lazy restore: %q, %v", sum, err)
		}
		remove(c)
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(fullT.Seconds()/n, "restore-first-answer-s")
	b.ReportMetric(lazyT.Seconds()/n, "lazy-first-answer-s")
	b.ReportMetric(pagesT.Seconds()/n, "lazy-pages-in-s")
	b.ReportMetric(lazyT.Seconds()/fullT.Seconds(), "lazy/restore")
	gbps := func(d time.Duration) float64 { return float64(bytes) / d.Seconds() / 1e9 }
	b.ReportMetric(gbps(dumpT), "dump-GB/s")
	b.ReportMetric(gbps(fullT), "restore-GB/s")
	b.ReportMetric(gbps(pagesT), "lazy-GB/s")
}
