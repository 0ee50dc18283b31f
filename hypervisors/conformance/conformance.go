// Package conformance is the test suite every backend passes against real
// workloads: discovery, freeze/thaw, dump then rollback, and a full round
// trip through a region (dump, seal, finish, verify, restore).
package conformance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/internal/testenv"
	"github.com/ckpt-dev/ckpt/memregion"
)

// Probe observes one running workload from outside.
type Probe interface {
	// Counter returns a value that grows while the workload runs.
	Counter(t *testing.T) int64
	// Intact fails the test unless everything that must survive a suspend
	// (memory contents, children, sockets, …) is as it was.
	Intact(t *testing.T)
}

// Harness connects the suite to one backend.
type Harness struct {
	Backend hypervisors.Backend
	// Start starts a fresh workload, returns its ID and a probe, and
	// arranges its cleanup.
	Start func(t *testing.T) (string, Probe)
	// Timeout bounds each step (default 2 minutes).
	Timeout time.Duration
	// DumpEnds says the backend's Dump ends the workload (libvirt's save
	// stops the domain's QEMU): a rollback brings it back from the dump,
	// as a new process.
	DumpEnds bool
}

// Run runs the suite.
func Run(t *testing.T, h Harness) {
	if h.Timeout == 0 {
		h.Timeout = 2 * time.Minute
	}
	t.Run("Discover", func(t *testing.T) { testDiscover(t, h) })
	t.Run("FreezeThaw", func(t *testing.T) { testFreezeThaw(t, h) })
	t.Run("ThawTwice", func(t *testing.T) { testThawTwice(t, h) })
	t.Run("DumpThenRollback", func(t *testing.T) { testDumpRollback(t, h) })
	t.Run("CancelMidFreeze", func(t *testing.T) { testCancelFreeze(t, h) })
	for _, after := range []time.Duration{0, 20 * time.Millisecond, 200 * time.Millisecond} {
		t.Run(fmt.Sprintf("CancelMidDump/%s", after), func(t *testing.T) { testCancelDump(t, h, after) })
	}
	// Both layouts: a dir region lets backends write files in place
	// (DirectSink), the raw layout (pmem) makes them stream objects.
	for _, kind := range []string{memregion.KindDir, memregion.KindRaw} {
		t.Run("RoundTrip/"+kind, func(t *testing.T) { testRoundTrip(t, h, kind, false) })
	}
	if _, ok := h.Backend.(hypervisors.PreDumper); ok {
		for _, kind := range []string{memregion.KindDir, memregion.KindRaw} {
			t.Run("PreDumpRoundTrip/"+kind, func(t *testing.T) { testRoundTrip(t, h, kind, true) })
		}
		t.Run("PreDumpThenRollback", func(t *testing.T) { testPreDumpRollback(t, h) })
	}
}

// testPreDumpRollback: a suspend rolled back after the pre-dump, before
// the freeze (another workload failed): Thaw leaves the workload running
// as it was, with nothing of the pre-dump under way, and a second Thaw
// is harmless.
func testPreDumpRollback(t *testing.T, h Harness) {
	ctx := h.ctx(t)
	id, p := h.Start(t)
	w := find(t, ctx, h.Backend, id)
	r := newRegion(t, memregion.KindDir)
	err := h.Backend.(hypervisors.PreDumper).PreDump(ctx, w, hypervisors.RegionSink{Region: r, Prefix: w.ID})
	if errors.Is(err, hypervisors.ErrNotSupported) {
		t.Skipf("skipped: this host cannot pre-dump: %v", err)
	}
	if err != nil {
		t.Fatalf("PreDump: %v", err)
	}
	for range 2 {
		if err := h.Backend.Thaw(ctx, w); err != nil {
			t.Fatalf("Thaw after PreDump: %v", err)
		}
	}
	if err := r.Discard(); err != nil {
		t.Fatal(err)
	}
	Advancing(t, p, p.Counter(t))
	p.Intact(t)
	// The backend is ready for a whole suspend, pre-dump and all.
	testRoundTripOn(t, h, ctx, id, p, memregion.KindDir, true)
}

func (h Harness) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), h.Timeout)
	t.Cleanup(cancel)
	return ctx
}

// find returns the workload with id, or fails.
func find(t *testing.T, ctx context.Context, b hypervisors.Backend, id string) hypervisors.Workload {
	t.Helper()
	ws, err := b.Discover(ctx)
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	for _, w := range ws {
		if w.ID == id {
			return w
		}
	}
	t.Fatalf("Discover did not find %s among %d workloads", id, len(ws))
	return hypervisors.Workload{}
}

func testDiscover(t *testing.T, h Harness) {
	id, _ := h.Start(t)
	w := find(t, h.ctx(t), h.Backend, id)
	if w.Backend != h.Backend.Name() || w.Kind == "" || w.MemoryBytes <= 0 {
		t.Fatalf("workload %+v: want backend %s, a kind and a memory size", w, h.Backend.Name())
	}
}

// stalled checks that the counter does not move over a while.
func stalled(t *testing.T, p Probe) {
	t.Helper()
	a := p.Counter(t)
	time.Sleep(500 * time.Millisecond)
	if b := p.Counter(t); b != a {
		t.Fatalf("counter moved from %d to %d while frozen", a, b)
	}
}

// Advancing waits until the probe's counter grows past min and returns
// it, or fails the test.
func Advancing(t *testing.T, p Probe, min int64) int64 {
	t.Helper()
	// A liveness bound, generous: TCG guests on a loaded CI machine
	// (both QEMUs' suites in parallel, under -race) have gone 10 s
	// without a tick.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c := p.Counter(t); c > min {
			return c
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("counter did not grow past %d", min)
	return 0
}

func testFreezeThaw(t *testing.T, h Harness) {
	ctx := h.ctx(t)
	id, p := h.Start(t)
	w := find(t, ctx, h.Backend, id)
	if err := h.Backend.Freeze(ctx, w); err != nil {
		t.Fatalf("Freeze: %v", err)
	}
	frozenAt := p.Counter(t)
	stalled(t, p)
	if err := h.Backend.Thaw(ctx, w); err != nil {
		t.Fatalf("Thaw: %v", err)
	}
	Advancing(t, p, frozenAt)
	p.Intact(t)
}

// testThawTwice: Thaw is idempotent, so a rollback that is repeated (a
// recover after a crashed rollback) is harmless.
func testThawTwice(t *testing.T, h Harness) {
	ctx := h.ctx(t)
	id, p := h.Start(t)
	w := find(t, ctx, h.Backend, id)
	if err := h.Backend.Freeze(ctx, w); err != nil {
		t.Fatalf("Freeze: %v", err)
	}
	frozenAt := p.Counter(t)
	for i := range 2 {
		if err := h.Backend.Thaw(ctx, w); err != nil {
			t.Fatalf("Thaw #%d: %v", i+1, err)
		}
	}
	Advancing(t, p, frozenAt)
	p.Intact(t)
}

// testCancelFreeze: a Freeze whose ctx ends while it runs may or may not
// have taken effect; a Thaw afterwards leaves the workload running.
func testCancelFreeze(t *testing.T, h Harness) {
	id, p := h.Start(t)
	w := find(t, h.ctx(t), h.Backend, id)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(time.Millisecond); cancel() }()
	err := h.Backend.Freeze(ctx, w)
	t.Logf("Freeze cut short: %v", err)
	if err := h.Backend.Thaw(h.ctx(t), w); err != nil {
		t.Fatalf("Thaw: %v", err)
	}
	runsOn(t, p)
}

// testCancelDump: a Dump whose ctx ends after a while returns only when
// every tool it started has stopped; the rollback's Thaw (twice: it may
// be repeated) then leaves the workload running for good, still managed
// by its runtime, and nothing refreezes it later.
func testCancelDump(t *testing.T, h Harness, after time.Duration) {
	id, p := h.Start(t)
	w := find(t, h.ctx(t), h.Backend, id)
	r := newRegion(t, memregion.KindDir)
	if err := h.Backend.Freeze(h.ctx(t), w); err != nil {
		t.Fatalf("Freeze: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(after, cancel)
	_, err := h.Backend.Dump(ctx, w, hypervisors.RegionSink{Region: r, Prefix: w.ID})
	t.Logf("Dump cancelled after %s: %v", after, err)
	for i := range 2 {
		if err := h.Backend.Thaw(h.ctx(t), w); err != nil {
			t.Fatalf("Thaw #%d: %v", i+1, err)
		}
	}
	if err := r.Discard(); err != nil {
		t.Fatal(err)
	}
	runsOn(t, p)
	find(t, h.ctx(t), h.Backend, id) // its runtime still manages it
}

// runsOn checks that the workload runs, and still runs a second later
// (a tool left behind could refreeze it when it ends).
func runsOn(t *testing.T, p Probe) {
	t.Helper()
	c := Advancing(t, p, p.Counter(t))
	time.Sleep(time.Second)
	Advancing(t, p, c)
	p.Intact(t)
}

// regionSize is the raw region the suite formats; workloads must fit.
const regionSize = 2 * memregion.GiB

func newRegion(t *testing.T, kind string) *memregion.Region {
	t.Helper()
	return testenv.Region(t, "", kind, regionSize)
}

func testDumpRollback(t *testing.T, h Harness) {
	ctx := h.ctx(t)
	id, p := h.Start(t)
	w := find(t, ctx, h.Backend, id)
	r := newRegion(t, memregion.KindDir)
	if err := h.Backend.Freeze(ctx, w); err != nil {
		t.Fatalf("Freeze: %v", err)
	}
	frozenAt := p.Counter(t)
	if _, err := h.Backend.Dump(ctx, w, hypervisors.RegionSink{Region: r, Prefix: w.ID}); err != nil {
		h.Backend.Thaw(ctx, w)
		t.Fatalf("Dump: %v", err)
	}
	stalled(t, p) // a dump leaves the workload frozen
	// Rollback: nothing is committed, the original runs on. Thaw comes
	// before the discard (see hypervisors.Backend.Thaw).
	if err := h.Backend.Thaw(ctx, w); err != nil {
		t.Fatalf("Thaw: %v", err)
	}
	if err := r.Discard(); err != nil {
		t.Fatal(err)
	}
	Advancing(t, p, frozenAt)
	p.Intact(t)
	if w2 := find(t, ctx, h.Backend, id); w2.PID != w.PID && !h.DumpEnds {
		t.Fatalf("after rollback the workload is a new process (%d, was %d)", w2.PID, w.PID)
	}
}

func testRoundTrip(t *testing.T, h Harness, kind string, preDump bool) {
	ctx := h.ctx(t)
	id, p := h.Start(t)
	testRoundTripOn(t, h, ctx, id, p, kind, preDump)
}

// testRoundTripOn suspends the running workload id into a region of
// kind and resumes it.
func testRoundTripOn(t *testing.T, h Harness, ctx context.Context, id string, p Probe, kind string, preDump bool) {
	w := find(t, ctx, h.Backend, id)
	r := newRegion(t, kind)
	sink := hypervisors.RegionSink{Region: r, Prefix: w.ID}
	if preDump {
		err := h.Backend.(hypervisors.PreDumper).PreDump(ctx, w, sink)
		if errors.Is(err, hypervisors.ErrNotSupported) {
			t.Skipf("skipped: this host cannot pre-dump: %v", err)
		}
		if err != nil {
			t.Fatalf("PreDump: %v", err)
		}
		if _, live := h.Backend.(hypervisors.LivePreDumper); !live {
			Advancing(t, p, p.Counter(t)) // still running
		} // else it may be stopped already: QEMU ends a mapped-ram pre-copy so
	}
	before := p.Counter(t)
	if err := h.Backend.Freeze(ctx, w); err != nil {
		t.Fatalf("Freeze: %v", err)
	}
	frozenAt := p.Counter(t)
	if frozenAt < before {
		t.Fatalf("counter went back from %d to %d", before, frozenAt)
	}
	start := time.Now()
	recipe, err := h.Backend.Dump(ctx, w, sink)
	if err != nil {
		h.Backend.Thaw(ctx, w)
		t.Fatalf("Dump: %v", err)
	}
	dumped := time.Since(start)
	var objs []string
	for _, o := range r.Objects() {
		objs = append(objs, o.Name)
	}
	m := &memregion.Manifest{Workloads: []memregion.WorkloadRecord{{
		ID: w.ID, Kind: w.Kind, Backend: w.Backend, MemoryBytes: w.MemoryBytes, Objects: objs, Restore: recipe}}}
	if err := r.Seal(ctx, m); err != nil {
		h.Backend.Thaw(ctx, w)
		t.Fatalf("Seal: %v", err)
	}
	if err := h.Backend.Finish(ctx, w); err != nil {
		t.Fatalf("Finish: %v", err)
	}
	if ws, _ := h.Backend.Discover(ctx); containsID(ws, id) {
		t.Fatalf("%s still runs after Finish", id)
	}
	m, err = r.Verify(ctx)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	rec := m.Workloads[0]
	start = time.Now()
	src := hypervisors.RegionSource{Region: r, Manifest: m, Prefix: rec.ID}
	if err := h.Backend.Restore(ctx, w, json.RawMessage(rec.Restore), src); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	t.Logf("%s: %s dumped in %s, restored in %s", id, memregion.HumanBytes(m.TotalBytes()), dumped.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	find(t, ctx, h.Backend, id)
	if c := Advancing(t, p, frozenAt); c < frozenAt {
		t.Fatalf("counter restarted: %d < %d", c, frozenAt)
	}
	p.Intact(t)
}

func containsID(ws []hypervisors.Workload, id string) bool {
	for _, w := range ws {
		if w.ID == id {
			return true
		}
	}
	return false
}
