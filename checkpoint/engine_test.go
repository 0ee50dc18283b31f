package checkpoint_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/checkpoint"
	"github.com/ckpt-dev/ckpt/checkpoint/kexec"
	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/journal"
	"github.com/ckpt-dev/ckpt/memregion"
	"github.com/ckpt-dev/ckpt/restore"
)

// fake is a backend of in-memory workloads for the engine's logic; the
// real backends have their own tests against real workloads.
type fake struct {
	name string
	mu   sync.Mutex
	ws   map[string]*fakeWorkload
	// failDump / failRestore name a workload whose Dump / Restore fails.
	failDump, failRestore string
	// freezeLate names a workload whose Freeze takes effect but returns an
	// error (a QMP "stop" whose answer was cut short).
	freezeLate string
	// endsOnDump names a workload whose Dump ends it (CRIU's TCP path):
	// it records a rescue first; onRescue sees the journal at that point.
	endsOnDump string
	onRescue   func()
	// onFreeze, when set, is called by Freeze before it freezes.
	onFreeze func(w hypervisors.Workload)
	// thawErr is what Thaw returns (a timeout, say) instead of thawing.
	thawErr error
	// dumpDelay makes every dump take this long (to observe concurrency).
	dumpDelay time.Duration
	revived   []string
	inFlight  atomic.Int32
	maxFlight atomic.Int32
	order     []string // dump start order
}

type fakeWorkload struct {
	pid      int
	size     int64
	state    string // running, frozen, ended
	restored int
}

func newFake(name string, sizes map[string]int64) *fake {
	f := &fake{name: name, ws: map[string]*fakeWorkload{}}
	for id, n := range sizes {
		f.ws[id] = &fakeWorkload{size: n, state: "running"}
	}
	return f
}

func (f *fake) Name() string { return f.name }

func (f *fake) Discover(context.Context) ([]hypervisors.Workload, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []hypervisors.Workload
	for id, w := range f.ws {
		if w.state != "ended" {
			out = append(out, hypervisors.Workload{ID: id, Kind: "fake", Backend: f.name, PID: w.pid, MemoryBytes: w.size})
		}
	}
	return out, nil
}

func (f *fake) set(id, from, to string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.ws[id]
	if w == nil {
		return hypervisors.ErrNotFound
	}
	if from != "" && w.state != from {
		return fmt.Errorf("%s is %s, not %s", id, w.state, from)
	}
	w.state = to
	return nil
}

func (f *fake) state(id string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ws[id].state
}

func (f *fake) Freeze(_ context.Context, w hypervisors.Workload) error {
	if f.onFreeze != nil {
		f.onFreeze(w)
	}
	if err := f.set(w.ID, "running", "frozen"); err != nil {
		return err
	}
	if w.ID == f.freezeLate {
		return context.DeadlineExceeded
	}
	return nil
}
func (f *fake) Thaw(_ context.Context, w hypervisors.Workload) error {
	if f.thawErr != nil {
		return f.thawErr
	}
	if f.state(w.ID) == "ended" {
		return hypervisors.ErrNotFound
	}
	return f.set(w.ID, "", "running")
}

var _ hypervisors.Reviver = (*fake)(nil)

// Revive brings back a workload its dump ended from the rescue record.
func (f *fake) Revive(_ context.Context, w hypervisors.Workload, record json.RawMessage) error {
	var r struct{ Ended string }
	if err := json.Unmarshal(record, &r); err != nil || r.Ended != w.ID {
		return fmt.Errorf("bad rescue record %s", record)
	}
	f.mu.Lock()
	f.revived = append(f.revived, w.ID)
	f.mu.Unlock()
	return f.set(w.ID, "", "running")
}
func (f *fake) Finish(_ context.Context, w hypervisors.Workload) error {
	return f.set(w.ID, "frozen", "ended")
}

func (f *fake) Dump(ctx context.Context, w hypervisors.Workload, dst hypervisors.ObjectSink) (json.RawMessage, error) {
	n := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for {
		m := f.maxFlight.Load()
		if n <= m || f.maxFlight.CompareAndSwap(m, n) {
			break
		}
	}
	f.mu.Lock()
	f.order = append(f.order, w.ID)
	size := f.ws[w.ID].size
	f.mu.Unlock()
	select {
	case <-time.After(f.dumpDelay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if w.ID == f.failDump {
		return nil, errors.New("injected dump failure")
	}
	if w.ID == f.endsOnDump {
		if err := hypervisors.RecordRescue(dst, json.RawMessage(fmt.Sprintf(`{"Ended":%q}`, w.ID))); err != nil {
			return nil, err
		}
		if f.onRescue != nil {
			f.onRescue()
		}
		f.set(w.ID, "frozen", "ended")
	}
	o, err := dst.Create("mem", size)
	if err != nil {
		return nil, err
	}
	if _, err := io.CopyN(o, zeros{}, size); err != nil {
		o.Close()
		return nil, err
	}
	if err := o.Close(); err != nil {
		return nil, err
	}
	return json.Marshal(map[string]int64{"size": size})
}

func (f *fake) Restore(_ context.Context, w hypervisors.Workload, recipe json.RawMessage, src hypervisors.ObjectSource) error {
	if w.ID == f.failRestore {
		return errors.New("injected restore failure")
	}
	rc, err := src.Open("mem")
	if err != nil {
		return err
	}
	defer rc.Close()
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ws[w.ID].state = "running"
	f.ws[w.ID].restored++
	return nil
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// env is a region, journal, state and lock in a temp dir.
type env struct {
	region, journal, state string
}

func newEnv(t *testing.T, kind string, size int64) env {
	t.Helper()
	d := t.TempDir()
	journal.LockPath = filepath.Join(d, "lock")
	e := env{region: filepath.Join(d, "region"), journal: filepath.Join(d, "journal.json"), state: filepath.Join(d, "resumed.json")}
	if err := memregion.Format(e.region, memregion.FormatOptions{Kind: kind, Size: size}); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e env) opts(bs ...hypervisors.Backend) checkpoint.Options {
	return checkpoint.Options{Region: e.region, Backends: bs, Journal: e.journal, Concurrency: 3}
}

func (e env) resume(bs ...hypervisors.Backend) restore.Options {
	return restore.Options{Region: e.region, Backends: bs, Journal: e.journal, State: e.state}
}

func suspend(t *testing.T, ctx context.Context, o checkpoint.Options) (*checkpoint.Result, error) {
	t.Helper()
	p, err := checkpoint.NewPlan(ctx, o)
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	return checkpoint.Suspend(ctx, p)
}

func TestSuspendAndResume(t *testing.T) {
	e := newEnv(t, memregion.KindDir, 0)
	a := newFake("a", map[string]int64{"x": 3 << 20, "y": 1 << 20})
	b := newFake("b", map[string]int64{"z": 2 << 20})
	ctx := context.Background()
	o := e.opts(a, b)
	o.Concurrency = 0 // the default
	res, err := suspend(t, ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if res.Concurrency != runtime.GOMAXPROCS(0) {
		t.Fatalf("concurrency %d; want one dump per CPU (%d)", res.Concurrency, runtime.GOMAXPROCS(0))
	}
	if res.Bytes != 6<<20 || len(res.Workloads) != 3 {
		t.Fatalf("result %+v", res)
	}
	for _, s := range []string{a.state("x"), a.state("y"), b.state("z")} {
		if s != "ended" {
			t.Fatalf("after suspend a workload is %s, want ended", s)
		}
	}
	rr, err := restore.ResumeAll(ctx, e.resume(a, b))
	if err != nil {
		t.Fatal(err)
	}
	if len(rr.Restored) != 3 || !rr.Released {
		t.Fatalf("resume %+v", rr)
	}
	if a.state("x") != "running" || b.state("z") != "running" {
		t.Fatal("not running after resume")
	}
}

func TestLargestFirstWithinConcurrency(t *testing.T) {
	e := newEnv(t, memregion.KindDir, 0)
	a := newFake("a", map[string]int64{"s1": 1 << 20, "s2": 1 << 20, "l": 8 << 20, "m": 4 << 20, "s3": 1 << 20})
	a.dumpDelay = 50 * time.Millisecond
	o := e.opts(a)
	o.Concurrency = 2
	if _, err := suspend(t, context.Background(), o); err != nil {
		t.Fatal(err)
	}
	// The two largest start first (between them, in either order: they
	// start together).
	if first := map[string]bool{a.order[0]: true, a.order[1]: true}; !first["l"] || !first["m"] {
		t.Fatalf("dump order %v; want the two largest first", a.order)
	}
	if n := a.maxFlight.Load(); n > 2 || n < 2 {
		t.Fatalf("%d dumps at once; want 2", n)
	}
}

func TestDumpFailureRollsBack(t *testing.T) {
	e := newEnv(t, memregion.KindDir, 0)
	a := newFake("a", map[string]int64{"x": 1 << 20, "bad": 1 << 20})
	b := newFake("b", map[string]int64{"z": 1 << 20})
	a.failDump = "bad"
	_, err := suspend(t, context.Background(), e.opts(a, b))
	var pe *checkpoint.PhaseError
	if !errors.As(err, &pe) || pe.Phase != "dump" || pe.Workload != "a/bad" || pe.Rollback != nil {
		t.Fatalf("err = %v; want a dump PhaseError naming a/bad with a complete rollback", err)
	}
	for _, s := range []string{a.state("x"), a.state("bad"), b.state("z")} {
		if s != "running" {
			t.Fatalf("after a failed dump a workload is %s", s)
		}
	}
	assertRegionEmpty(t, e)
	if j, _ := checkpoint.ReadJournal(e.journal); j != nil {
		t.Fatalf("journal left after a clean rollback: %+v", j)
	}
}

func TestRegionFullRollsBack(t *testing.T) {
	e := newEnv(t, memregion.KindRaw, 64<<20)
	a := newFake("a", map[string]int64{"x": 8 << 20})
	o := e.opts(a)
	o.Headroom = 1 << 20
	p, err := checkpoint.NewPlan(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	a.ws["x"].size = 128 << 20 // it grew after the plan
	a.mu.Unlock()
	_, err = checkpoint.Suspend(context.Background(), p)
	if !errors.Is(err, memregion.ErrNoSpace) {
		t.Fatalf("err = %v; want ErrNoSpace", err)
	}
	if a.state("x") != "running" {
		t.Fatal("workload not running after the region filled up")
	}
	assertRegionEmpty(t, e)
}

func TestPlanRefusesTooSmallRegion(t *testing.T) {
	e := newEnv(t, memregion.KindRaw, 64<<20)
	a := newFake("a", map[string]int64{"x": 100 << 20})
	_, err := checkpoint.NewPlan(context.Background(), e.opts(a))
	var pe *checkpoint.PlanError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "region") {
		t.Fatalf("err = %v; want a PlanError about the region", err)
	}
	if a.state("x") != "running" {
		t.Fatal("plan touched a workload")
	}
}

func TestCancelRollsBack(t *testing.T) {
	e := newEnv(t, memregion.KindDir, 0)
	a := newFake("a", map[string]int64{"x": 1 << 20, "y": 1 << 20})
	a.dumpDelay = 5 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	_, err := suspend(t, ctx, e.opts(a))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v; want context.Canceled", err)
	}
	if a.state("x") != "running" || a.state("y") != "running" {
		t.Fatal("a cancelled suspend left workloads frozen")
	}
}

// TestRecoverAfterCrash: a journal left by a run that died mid-dump makes
// Recover (and the next run) thaw what it froze.
func TestRecoverAfterCrash(t *testing.T) {
	e := newEnv(t, memregion.KindDir, 0)
	a := newFake("a", map[string]int64{"x": 1 << 20})
	a.set("x", "running", "frozen")
	j := &checkpoint.Journal{Path: e.journal, Region: e.region, State: checkpoint.StateFrozen,
		Workloads: []hypervisors.Workload{{ID: "x", Backend: "a"}}}
	if err := j.Save(); err != nil {
		t.Fatal(err)
	}
	thawed, err := checkpoint.Recover(context.Background(), e.journal, []hypervisors.Backend{a}, nil)
	if err != nil || len(thawed) != 1 || a.state("x") != "running" {
		t.Fatalf("Recover = %v, %v; state %s", thawed, err, a.state("x"))
	}
	if j, _ := checkpoint.ReadJournal(e.journal); j != nil {
		t.Fatal("journal kept after recovery")
	}
	// And automatically at the next suspend.
	a.set("x", "running", "frozen")
	j.Save()
	if _, err := suspend(t, context.Background(), e.opts(a)); err != nil {
		t.Fatalf("suspend after a crash: %v", err)
	}
}

// TestResumeRetriesOnlyFailed: a failed restore keeps its images, the
// others go on, and a second resume-all restores only the failed one.
func TestResumeRetriesOnlyFailed(t *testing.T) {
	e := newEnv(t, memregion.KindDir, 0)
	a := newFake("a", map[string]int64{"x": 1 << 20, "y": 1 << 20})
	ctx := context.Background()
	if _, err := suspend(t, ctx, e.opts(a)); err != nil {
		t.Fatal(err)
	}
	a.failRestore = "y"
	rr, err := restore.ResumeAll(ctx, e.resume(a))
	if !errors.Is(err, restore.ErrPartial) || len(rr.Failed) != 1 || rr.Released {
		t.Fatalf("first resume = %+v, %v; want y failed and the region kept", rr, err)
	}
	a.failRestore = ""
	rr, err = restore.ResumeAll(ctx, e.resume(a))
	if err != nil || len(rr.Restored) != 1 || rr.Restored[0].Key != "a/y" || !rr.Released {
		t.Fatalf("second resume = %+v, %v; want only a/y, then release", rr, err)
	}
	if a.ws["x"].restored != 1 || a.ws["y"].restored != 1 {
		t.Fatalf("restored x %d times, y %d times", a.ws["x"].restored, a.ws["y"].restored)
	}
}

// TestResumeRefusesCorruptObject: the workload whose object is corrupt is
// refused and keeps its images; the others are restored.
func TestResumeRefusesCorruptObject(t *testing.T) {
	e := newEnv(t, memregion.KindDir, 0)
	a := newFake("a", map[string]int64{"x": 1 << 20, "y": 1 << 20})
	ctx := context.Background()
	if _, err := suspend(t, ctx, e.opts(a)); err != nil {
		t.Fatal(err)
	}
	corruptObject(t, e.region, "y")
	rr, err := restore.ResumeAll(ctx, e.resume(a))
	if !errors.Is(err, restore.ErrPartial) || len(rr.Failed) != 1 || !strings.Contains(rr.Failed[0].Error, "checksum") {
		t.Fatalf("resume = %+v, %v; want a/y refused for its checksum", rr, err)
	}
	if a.state("x") != "running" || a.state("y") != "ended" {
		t.Fatalf("x %s, y %s", a.state("x"), a.state("y"))
	}
	r, err := memregion.Open(e.region, memregion.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if sealed, _ := r.Sealed(); !sealed {
		t.Fatal("the region was released with a workload not restored")
	}
}

func assertRegionEmpty(t *testing.T, e env) {
	t.Helper()
	r, err := memregion.Open(e.region, memregion.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if sealed, _ := r.Sealed(); sealed {
		t.Fatal("region sealed after a rollback")
	}
	if n := len(r.Objects()); n != 0 {
		t.Fatalf("%d objects left after a rollback", n)
	}
}

// TestDryRunRollsBack: a dry run dumps everything, reports the timings,
// and leaves every workload running and the region empty.
func TestDryRunRollsBack(t *testing.T) {
	e := newEnv(t, memregion.KindDir, 0)
	a := newFake("a", map[string]int64{"x": 2 << 20, "y": 1 << 20})
	o := e.opts(a)
	o.DryRun = true
	res, err := suspend(t, context.Background(), o)
	if err != nil || res.Bytes != 3<<20 || res.GBps <= 0 {
		t.Fatalf("dry run = %+v, %v", res, err)
	}
	if a.state("x") != "running" || a.state("y") != "running" {
		t.Fatal("dry run left workloads frozen")
	}
	assertRegionEmpty(t, e)
}

// TestDumpReportsProgress: while dumps run, "progress" events report the
// bytes the region has taken against the plan's total, never going back.
func TestDumpReportsProgress(t *testing.T) {
	e := newEnv(t, memregion.KindRaw, 256<<20)
	a := newFake("a", map[string]int64{"x": 8 << 20, "y": 4 << 20})
	a.dumpDelay = 3 * checkpoint.ProgressInterval / 2
	o := e.opts(a)
	o.Concurrency = 1
	var mu sync.Mutex
	var prog []checkpoint.Event
	o.Events = func(ev checkpoint.Event) {
		if ev.Phase == "progress" {
			mu.Lock()
			prog = append(prog, ev)
			mu.Unlock()
		}
	}
	if _, err := suspend(t, context.Background(), o); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	var last int64
	partial := false
	for _, ev := range prog {
		if ev.Total != 12<<20 {
			t.Fatalf("progress total %d, want %d", ev.Total, 12<<20)
		}
		if ev.Bytes < last {
			t.Fatalf("progress went back from %d to %d", last, ev.Bytes)
		}
		last = ev.Bytes
		partial = partial || (ev.Bytes >= 8<<20 && ev.Bytes < 12<<20)
	}
	if !partial {
		t.Fatalf("no progress event between the two dumps: %+v", prog)
	}
}

// TestPlanEstimatesFrozenTime: before any suspend the estimate is a memcpy
// lower bound; after one it uses the dump rate that suspend achieved.
func TestPlanEstimatesFrozenTime(t *testing.T) {
	e := newEnv(t, memregion.KindDir, 0)
	ctx := context.Background()
	p, err := checkpoint.NewPlan(ctx, e.opts(newFake("a", map[string]int64{"x": 4 << 20})))
	if err != nil {
		t.Fatal(err)
	}
	if p.EstimatedFrozenS <= 0 || !strings.Contains(p.EstimateBasis, "lower bound: memcpy") {
		t.Fatalf("first estimate %.3fs (%s)", p.EstimatedFrozenS, p.EstimateBasis)
	}
	a := newFake("a", map[string]int64{"x": 4 << 20})
	a.dumpDelay = 100 * time.Millisecond
	res, err := suspend(t, ctx, e.opts(a))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := restore.ResumeAll(ctx, e.resume(a)); err != nil {
		t.Fatal(err)
	}
	p, err = checkpoint.NewPlan(ctx, e.opts(a))
	if err != nil {
		t.Fatal(err)
	}
	want := float64(p.Bytes) / (res.GBps * 1e9)
	if !strings.Contains(p.EstimateBasis, "measured by the last suspend-all") || p.EstimatedFrozenS < want*0.99 || p.EstimatedFrozenS > want*1.01 {
		t.Fatalf("estimate %.3fs (%s), want %.3fs from %.4f GB/s", p.EstimatedFrozenS, p.EstimateBasis, want, res.GBps)
	}
}

// TestPlanChecksKexecTarget: a kernel that cannot be kexec'd blocks the
// plan, naming every reason (a missing image; no kexec in this kernel,
// with what to do instead).
func TestPlanChecksKexecTarget(t *testing.T) {
	e := newEnv(t, memregion.KindDir, 0)
	o := e.opts(newFake("a", map[string]int64{"x": 1 << 20}))
	o.Kexec = &kexec.Image{Kernel: filepath.Join(t.TempDir(), "vmlinuz-missing"), Cmdline: "quiet"}
	p, err := checkpoint.NewPlan(context.Background(), o)
	var pe *checkpoint.PlanError
	if !errors.As(err, &pe) {
		t.Fatalf("plan error %v, want a PlanError", err)
	}
	text := strings.Join(p.Problems, "\n")
	if kexec.Check() != nil && !strings.Contains(text, "fall back to a full reboot") {
		t.Fatalf("problems lack the fallback: %s", text)
	}
	if !strings.Contains(text, "vmlinuz-missing") {
		t.Fatalf("problems do not name the missing kernel: %s", text)
	}
}

// preparing is a fake backend that also prepares the boot.
type preparing struct {
	*fake
	prepared []string
	recipes  []string
}

func (p *preparing) PrepareBoot(_ context.Context, w hypervisors.Workload, recipe json.RawMessage) error {
	p.prepared = append(p.prepared, w.ID)
	p.recipes = append(p.recipes, string(recipe))
	return nil
}

// TestPrepareBeforeResume: restore.Prepare hands each backend that
// prepares boots its workloads' recipes from the manifest, restores
// nothing and keeps the checkpoint; it does nothing without a commit.
func TestPrepareBeforeResume(t *testing.T) {
	e := newEnv(t, memregion.KindDir, 0)
	a := &preparing{fake: newFake("a", map[string]int64{"x": 1 << 20, "y": 1 << 20})}
	b := newFake("b", map[string]int64{"z": 1 << 20})
	ctx := context.Background()
	pr, err := restore.Prepare(ctx, e.region, []hypervisors.Backend{a, b}, nil)
	if err != nil || pr.Committed || len(a.prepared) != 0 {
		t.Fatalf("prepare without a checkpoint = %+v, %v; prepared %v", pr, err, a.prepared)
	}
	if _, err := suspend(t, ctx, e.opts(a, b)); err != nil {
		t.Fatal(err)
	}
	pr, err = restore.Prepare(ctx, e.region, []hypervisors.Backend{a, b}, nil)
	slices.Sort(a.prepared)
	if err != nil || !pr.Committed || len(pr.Prepared) != 2 || !slices.Equal(a.prepared, []string{"x", "y"}) {
		t.Fatalf("prepare = %+v, %v; prepared %v, want a's x and y", pr, err, a.prepared)
	}
	for _, r := range a.recipes {
		if r == "" || r == "null" {
			t.Fatalf("prepare got no recipe: %q", a.recipes)
		}
	}
	if a.ws["x"].restored != 0 || b.ws["z"].restored != 0 {
		t.Fatal("prepare restored a workload")
	}
	a.failRestore = "y"
	if _, err := restore.ResumeAll(ctx, e.resume(a, b)); !errors.Is(err, restore.ErrPartial) {
		t.Fatalf("resume = %v, want partial", err)
	}
	st := restore.ReadState(e.state)
	if st == nil || !strings.Contains(st.Failed["a/y"], "injected restore failure") || len(st.Restored) != 2 {
		t.Fatalf("resume state %+v: want a/y failed with its reason, two restored", st)
	}
}

// TestRollbackThawsEveryTriedFreeze: a freeze whose call failed may still
// have taken effect; the rollback thaws it too.
func TestRollbackThawsEveryTriedFreeze(t *testing.T) {
	e := newEnv(t, memregion.KindDir, 0)
	a := newFake("a", map[string]int64{"x": 1 << 20, "y": 1 << 20})
	a.freezeLate = "y"
	_, err := suspend(t, context.Background(), e.opts(a))
	var pe *checkpoint.PhaseError
	if !errors.As(err, &pe) || pe.Phase != "freeze" || pe.Rollback != nil {
		t.Fatalf("err = %v; want a freeze failure, rolled back", err)
	}
	for _, id := range []string{"x", "y"} {
		if st := a.state(id); st != "running" {
			t.Errorf("%s is %s after the rollback", id, st)
		}
	}
}

// TestFreezeIsJournalledBeforeItIsIssued: when a backend's Freeze is
// called, the on-disk journal already lists that freeze (a ckpt killed
// inside the call leaves a recover that thaws it).
func TestFreezeIsJournalledBeforeItIsIssued(t *testing.T) {
	e := newEnv(t, memregion.KindDir, 0)
	a := newFake("a", map[string]int64{"x": 1 << 20, "y": 1 << 20, "z": 1 << 20})
	var mu sync.Mutex
	var missing []string
	a.onFreeze = func(w hypervisors.Workload) {
		j, err := checkpoint.ReadJournal(e.journal)
		mu.Lock()
		defer mu.Unlock()
		if err != nil || j == nil || !j.MayHaveFrozen("a/"+w.ID) || j.Freezes == nil {
			missing = append(missing, w.ID)
		}
	}
	if _, err := suspend(t, context.Background(), e.opts(a)); err != nil {
		t.Fatal(err)
	}
	if len(missing) > 0 {
		t.Fatalf("Freeze was called before the journal listed it for %v", missing)
	}
}

// TestRecoverKeepsFailedThaws: a thaw that fails for any reason but "no
// such workload" (a timeout here) keeps the journal, so the workload is
// not forgotten; a later recover finishes the job.
func TestRecoverKeepsFailedThaws(t *testing.T) {
	e := newEnv(t, memregion.KindDir, 0)
	a := newFake("a", map[string]int64{"x": 1 << 20})
	a.set("x", "running", "frozen")
	j := &checkpoint.Journal{Path: e.journal, Region: e.region, State: checkpoint.StateFrozen,
		Workloads: []hypervisors.Workload{{ID: "x", Backend: "a"}}, Freezes: []string{"a/x"}}
	if err := j.Save(); err != nil {
		t.Fatal(err)
	}
	a.thawErr = fmt.Errorf("runc state: %w", context.DeadlineExceeded)
	if _, err := checkpoint.Recover(context.Background(), e.journal, []hypervisors.Backend{a}, nil); err == nil {
		t.Fatal("Recover succeeded although the thaw timed out")
	}
	if j, _ := checkpoint.ReadJournal(e.journal); j == nil {
		t.Fatal("the journal of a frozen workload was dropped")
	}
	a.thawErr = nil
	if back, err := checkpoint.Recover(context.Background(), e.journal, []hypervisors.Backend{a}, nil); err != nil || len(back) != 1 || a.state("x") != "running" {
		t.Fatalf("second Recover = %v, %v; x is %s", back, err, a.state("x"))
	}
}

// TestCrashAfterDumpEndedWorkloadIsRevived: a dump that ends its workload
// records the rescue in the on-disk journal before it goes on. A ckpt
// killed from then on (the journal as it was then) leaves a recover that
// brings the workload back through the backend's Revive.
func TestCrashAfterDumpEndedWorkloadIsRevived(t *testing.T) {
	e := newEnv(t, memregion.KindDir, 0)
	a := newFake("a", map[string]int64{"x": 1 << 20, "y": 1 << 20})
	a.endsOnDump = "x"
	var atKill []byte
	ctx, cancel := context.WithCancel(context.Background())
	a.onRescue = func() { atKill, _ = os.ReadFile(e.journal); cancel() }
	if _, err := suspend(t, ctx, e.opts(a)); err == nil {
		t.Fatal("suspend succeeded")
	}
	if !bytes.Contains(atKill, []byte(`"rescues"`)) {
		t.Fatalf("the journal did not hold the rescue when the dump went on:\n%s", atKill)
	}
	// Replay the crash: the journal as it was, the workload ended.
	a.revived = nil
	a.set("x", "", "ended")
	a.set("y", "", "frozen")
	if err := os.WriteFile(e.journal, atKill, 0o600); err != nil {
		t.Fatal(err)
	}
	back, err := checkpoint.Recover(context.Background(), e.journal, []hypervisors.Backend{a}, nil)
	if err != nil || len(back) != 2 || !slices.Equal(a.revived, []string{"x"}) {
		t.Fatalf("Recover = %v, %v; revived %v", back, err, a.revived)
	}
	if a.state("x") != "running" || a.state("y") != "running" {
		t.Fatalf("after recover x is %s, y is %s", a.state("x"), a.state("y"))
	}
}

// TestObjectPrefixOneToOne: distinct workloads never share a prefix, and
// no prefix leaves its backend's directory.
func TestObjectPrefixOneToOne(t *testing.T) {
	ids := []string{"web 1", "web_1", "web/1", "web%1", ".", "..", "", ".hidden", "_", "_5f", "x.y", "ünï"}
	seen := map[string]string{}
	for _, id := range ids {
		p := checkpoint.ObjectPrefix(hypervisors.Workload{Backend: "criu", ID: id})
		dir, leaf, _ := strings.Cut(p, "/")
		if dir != "criu" || leaf == "" || leaf == "." || leaf == ".." || strings.Contains(leaf, "/") {
			t.Errorf("prefix of %q is %q", id, p)
		}
		if other, dup := seen[p]; dup {
			t.Errorf("%q and %q share the prefix %q", id, other, p)
		}
		seen[p] = id
	}
}

// TestResumeKeepsRegionWithAnyBadObject: a region in which verification
// failed anywhere is never released, even when no workload's record names
// the bad object and even when zero workloads are restored.
func TestResumeKeepsRegionWithAnyBadObject(t *testing.T) {
	for _, n := range []int{0, 1} {
		t.Run(fmt.Sprintf("%d workloads", n), func(t *testing.T) {
			e := newEnv(t, memregion.KindDir, 0)
			ctx := context.Background()
			sizes := map[string]int64{}
			if n > 0 {
				sizes["x"] = 1 << 20
			}
			a := newFake("a", sizes)
			r, err := memregion.Open(e.region, memregion.Options{})
			if err != nil {
				t.Fatal(err)
			}
			var recs []memregion.WorkloadRecord
			for id := range sizes {
				recipe, err := a.Dump(ctx, hypervisors.Workload{ID: id, Backend: "a"}, hypervisors.RegionSink{Region: r, Prefix: "a/" + id})
				if err != nil {
					t.Fatal(err)
				}
				recs = append(recs, memregion.WorkloadRecord{ID: id, Backend: "a", Prefix: "a/" + id, Objects: []string{"a/" + id + "/mem"}, Restore: recipe})
			}
			o, err := r.Create("stray/orphan", 4096)
			if err != nil {
				t.Fatal(err)
			}
			o.Write(bytes.Repeat([]byte{7}, 4096))
			if err := o.Close(); err != nil {
				t.Fatal(err)
			}
			if err := r.Seal(ctx, &memregion.Manifest{Workloads: recs}); err != nil {
				t.Fatal(err)
			}
			r.Close()
			corruptObject(t, e.region, "stray")
			rr, err := restore.ResumeAll(ctx, e.resume(a))
			if !errors.Is(err, restore.ErrKept) || rr == nil || rr.Released || len(rr.Restored) != n {
				t.Fatalf("resume = %+v, %v; want %d restored and the region kept", rr, err, n)
			}
			r, err = memregion.Open(e.region, memregion.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if sealed, _ := r.Sealed(); !sealed {
				t.Fatal("the region was released although an object failed verification")
			}
		})
	}
}

// TestRecoverAfterCommitOnSameBoot: a suspend killed after its seal, with
// some originals not yet ended (and the journal not yet saying
// "committed"), is undone by Recover on the same boot: the frozen
// original is thawed, the ended one restored from the region, once each,
// and the region released.
func TestRecoverAfterCommitOnSameBoot(t *testing.T) {
	e := newEnv(t, memregion.KindDir, 0)
	a := newFake("a", map[string]int64{"x": 1 << 20, "y": 1 << 20})
	ctx := context.Background()
	if _, err := suspend(t, ctx, e.opts(a)); err != nil {
		t.Fatal(err)
	}
	// Replay the kill: the journal as it was before "committed", x not
	// finished yet.
	j, err := checkpoint.ReadJournal(e.journal)
	if err != nil || j == nil {
		t.Fatalf("journal: %v, %v", j, err)
	}
	j.State = checkpoint.StateFrozen
	if err := j.Save(); err != nil {
		t.Fatal(err)
	}
	a.set("x", "ended", "frozen")
	back, err := checkpoint.RecoverWith(ctx, checkpoint.RecoverOptions{Journal: e.journal, ResumeState: e.state, Backends: []hypervisors.Backend{a}})
	if err != nil || len(back) != 2 {
		t.Fatalf("Recover = %v, %v", back, err)
	}
	if a.state("x") != "running" || a.state("y") != "running" || a.ws["x"].restored != 0 || a.ws["y"].restored != 1 {
		t.Fatalf("x %s (restored %d), y %s (restored %d)", a.state("x"), a.ws["x"].restored, a.state("y"), a.ws["y"].restored)
	}
	if j, _ := checkpoint.ReadJournal(e.journal); j != nil {
		t.Fatal("journal kept")
	}
	assertRegionEmpty(t, e)
}

// TestPlanRefusesAWorkloadClaimedTwice: a process two backends both see
// (a manager's container through a shared runc root) blocks the plan.
func TestPlanRefusesAWorkloadClaimedTwice(t *testing.T) {
	e := newEnv(t, memregion.KindDir, 0)
	a := newFake("a", map[string]int64{"x": 1 << 20})
	b := newFake("b", map[string]int64{"y": 1 << 20})
	a.ws["x"].pid, b.ws["y"].pid = 4242, 4242
	_, err := checkpoint.NewPlan(context.Background(), e.opts(a, b))
	var pe *checkpoint.PlanError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "same process (pid 4242)") {
		t.Fatalf("plan = %v; want the double claim refused", err)
	}
}

// stagingFake stages every byte it dumps outside a raw region.
type stagingFake struct{ *fake }

func (s stagingFake) StagingBytes(_ hypervisors.Workload, n int64, direct bool) int64 {
	if direct {
		return 0
	}
	return n
}

// TestPlanChecksStagingRAM: what backends stage in RAM outside a region
// that takes no files in place must fit in the host's available memory.
func TestPlanChecksStagingRAM(t *testing.T) {
	var ws int64 = 1 << 20
	for _, tc := range []struct {
		kind string
		size int64
		fail bool
	}{{memregion.KindDir, ws, false}, {memregion.KindRaw, ws, false}, {memregion.KindRaw, 1 << 50, true}} {
		e := newEnv(t, tc.kind, 64<<20)
		a := stagingFake{newFake("a", map[string]int64{"x": tc.size})}
		o := e.opts(a)
		o.Headroom = 1 // the region's own room is not what this tests
		p, err := checkpoint.NewPlan(context.Background(), o)
		staged := strings.Contains(fmt.Sprint(err), "stage")
		if staged != tc.fail || tc.kind == memregion.KindDir && p.StagingBytes != 0 || tc.kind == memregion.KindRaw && p.StagingBytes != tc.size {
			t.Errorf("%s region, %d bytes: plan %+v, %v", tc.kind, tc.size, p, err)
		}
		// The staging is told, with the layout that avoids it.
		hinted := strings.Contains(strings.Join(p.Warnings, "\n"), "--kind fs")
		if hinted != (tc.kind == memregion.KindRaw) {
			t.Errorf("%s region: warnings %q; want the fs layout named exactly when the backends stage", tc.kind, p.Warnings)
		}
	}
}

// lazyFake is a fake whose restores can be lazy: each runs at once and
// its pages come in when the test sends on pages (an error: the backend
// killed it).
type lazyFake struct {
	*fake
	started  chan string
	pages    chan error
	finished []string
}

func (f *lazyFake) Finish(ctx context.Context, w hypervisors.Workload) error {
	f.mu.Lock()
	f.finished = append(f.finished, w.ID)
	f.mu.Unlock()
	return f.fake.Finish(ctx, w)
}

func (f *lazyFake) RestoreLazy(ctx context.Context, w hypervisors.Workload, recipe json.RawMessage, src hypervisors.ObjectSource) (func() error, error) {
	if err := f.Restore(ctx, w, recipe, src); err != nil {
		return nil, err
	}
	f.started <- w.ID
	return func() error {
		if err := <-f.pages; err != nil {
			f.set(w.ID, "", "ended")
			return err
		}
		return nil
	}, nil
}

// TestLazyResume: a lazy workload runs before its pages are in, but the
// resume returns, and the region is released, only after them; one whose
// pages fail counts as failed, keeps its images, and is restored by the
// next resume.
func TestLazyResume(t *testing.T) {
	e := newEnv(t, memregion.KindDir, 0)
	a := &lazyFake{fake: newFake("a", map[string]int64{"x": 1 << 20, "y": 1 << 20}), started: make(chan string, 2), pages: make(chan error)}
	ctx := context.Background()
	if _, err := suspend(t, ctx, e.opts(a)); err != nil {
		t.Fatal(err)
	}
	type result struct {
		rr  *restore.Result
		err error
	}
	resume := func(lazy ...string) <-chan result {
		o := e.resume(a)
		o.Lazy = lazy
		ch := make(chan result, 1)
		go func() {
			rr, err := restore.ResumeAll(ctx, o)
			ch <- result{rr, err}
		}()
		return ch
	}
	sealed := func() bool {
		r, err := memregion.Open(e.region, memregion.Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		s, _ := r.Sealed()
		return s
	}

	done := resume("a/y")
	if id := <-a.started; id != "y" {
		t.Fatalf("lazy restore of %s; want only a/y", id)
	}
	deadline := time.Now().Add(10 * time.Second)
	for a.state("x") != "running" && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if a.state("x") != "running" || a.state("y") != "running" {
		t.Fatalf("x %s, y %s; want both running while y's pages come", a.state("x"), a.state("y"))
	}
	select {
	case r := <-done:
		t.Fatalf("resume returned before y's pages were in: %+v, %v", r.rr, r.err)
	case <-time.After(100 * time.Millisecond):
	}
	if !sealed() {
		t.Fatal("the region was released before y's pages were in")
	}
	// What a resume killed at this point leaves on disk.
	interrupted, err := os.ReadFile(e.state)
	if err != nil || !strings.Contains(string(interrupted), `"lazy":["a/y"]`) {
		t.Fatalf("resume state while y's pages come: %s, %v; want a/y recorded as lazy", interrupted, err)
	}
	a.pages <- errors.New("injected: the page server died")
	r := <-done
	if !errors.Is(r.err, restore.ErrPartial) || len(r.rr.Failed) != 1 || r.rr.Failed[0].Key != "a/y" || r.rr.Released {
		t.Fatalf("resume = %+v, %v; want a/y failed and the region kept", r.rr, r.err)
	}
	if !sealed() || a.state("y") != "ended" {
		t.Fatalf("after the failure: sealed %v, y %s", sealed(), a.state("y"))
	}

	// A resume killed while y's pages came: the next one ends y first
	// (its pages may never have come), then restores it again.
	if err := os.WriteFile(e.state, interrupted, 0o600); err != nil {
		t.Fatal(err)
	}
	done = resume("all")
	<-a.started
	a.pages <- nil
	r = <-done
	if r.err != nil || len(r.rr.Restored) != 1 || !r.rr.Released {
		t.Fatalf("second resume = %+v, %v; want a/y back, then the release", r.rr, r.err)
	}
	if !slices.Contains(a.finished, "y") || a.state("y") != "running" {
		t.Fatalf("after the interrupted lazy restore: finished %v, y %s; want y ended, then restored", a.finished, a.state("y"))
	}
	if w := r.rr.Restored[0]; w.PagesInS < w.Seconds || w.Seconds <= 0 {
		t.Fatalf("a/y ran after %.3fs, its pages were in after %.3fs", w.Seconds, w.PagesInS)
	}
}

// liveFake is a fake whose pre-dump leaves work under way (a VM's
// pre-copy): it records which workloads were journalled before their
// pre-dump began, and which pre-copies a Thaw ended.
type liveFake struct {
	*fake
	journal      string
	failPre      string
	journalled   map[string]bool
	preCopies    map[string]bool // under way
	preCopyEnded []string
}

func (f *liveFake) PreDumpLeavesWork() {}

func (f *liveFake) PreDump(_ context.Context, w hypervisors.Workload, _ hypervisors.ObjectSink) error {
	j, err := journal.Read(f.journal)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.journalled[w.ID] = err == nil && j != nil && slices.Contains(j.Freezes, f.name+"/"+w.ID)
	if w.ID == f.failPre {
		return errors.New("injected pre-dump failure")
	}
	f.preCopies[w.ID] = true
	return nil
}

func (f *liveFake) Thaw(ctx context.Context, w hypervisors.Workload) error {
	f.mu.Lock()
	if f.preCopies[w.ID] {
		delete(f.preCopies, w.ID)
		f.preCopyEnded = append(f.preCopyEnded, w.ID)
	}
	f.mu.Unlock()
	return f.fake.Thaw(ctx, w)
}

// TestLivePreDumpIsUndone: a pre-dump that leaves work under way is
// journalled like a freeze before it begins, and a suspend that fails
// later in the pre-dump phase ends it (Thaw) though nothing was frozen.
func TestLivePreDumpIsUndone(t *testing.T) {
	e := newEnv(t, memregion.KindDir, 0)
	a := &liveFake{fake: newFake("a", map[string]int64{"x": 4 << 20, "bad": 1 << 20}), journal: e.journal,
		failPre: "bad", journalled: map[string]bool{}, preCopies: map[string]bool{}}
	o := e.opts(a)
	o.PreDump = true
	_, err := suspend(t, context.Background(), o)
	var pe *checkpoint.PhaseError
	if !errors.As(err, &pe) || pe.Phase != "pre-dump" || pe.Rollback != nil {
		t.Fatalf("suspend = %v; want a pre-dump failure, rolled back", err)
	}
	if !a.journalled["x"] || !a.journalled["bad"] {
		t.Fatalf("journalled before their pre-dump: %v; want both", a.journalled)
	}
	if len(a.preCopies) != 0 || !slices.Contains(a.preCopyEnded, "x") {
		t.Fatalf("pre-copies still under way %v, ended %v; want x's ended", a.preCopies, a.preCopyEnded)
	}
	if a.state("x") != "running" || a.state("bad") != "running" {
		t.Fatalf("x %s, bad %s after the rollback", a.state("x"), a.state("bad"))
	}
}
