// Package restore resumes the workloads of a committed checkpoint: open
// and verify the region, restore every workload in parallel (in waves,
// e.g. externally exposed services first), and only when all are back
// release the region. A workload that fails keeps its images and can be
// retried (ResumeAll again, or Options.Only); nothing is restored twice.
package restore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/ckpt-dev/ckpt/fleetlock"
	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/internal/atomicfile"
	"github.com/ckpt-dev/ckpt/internal/memwatch"
	"github.com/ckpt-dev/ckpt/internal/thp"
	"github.com/ckpt-dev/ckpt/journal"
	"github.com/ckpt-dev/ckpt/memregion"
	"github.com/ckpt-dev/ckpt/update"
	"golang.org/x/sync/errgroup"
)

// DefaultState records which workloads of a checkpoint were restored.
const DefaultState = "/var/lib/ckpt/resumed.json"

// ErrPartial is wrapped when some workloads could not be resumed; they
// keep their images.
var ErrPartial = errors.New("some workloads could not be resumed")

// Options configure a resume. Zero values mean defaults.
type Options struct {
	Region   string
	Backends []hypervisors.Backend
	// Concurrency is how many workloads restore at once (default: one per
	// CPU, GOMAXPROCS).
	Concurrency int
	// Order lists workload keys ("backend/id"), kinds ("vm") or backends
	// ("qemu") to restore first, in waves, in this order; the rest follow.
	Order []string
	// Only restores just these workload keys (ckpt resume ID).
	Only []string
	// KeepRegion leaves the region committed even when all are back.
	KeepRegion bool
	// HugePages switches the host's transparent huge pages (and their
	// defrag mode) from madvise to always while the workloads restore, and
	// back after (internal/thp). CRIU faults
	// every restored page in; with 4 KiB faults a restore runs at half
	// its dump's rate on such a host (hypervisors/criu BenchmarkDumpRestore).
	// Memory restored meanwhile keeps its huge pages: a workload that uses
	// its memory sparsely may take more of it. Hosts in mode always (the
	// Debian kernel's default) or never are left as they are.
	HugePages bool
	// Lazy restores these workloads lazily where their backend can
	// (hypervisors.LazyRestorer): each runs as soon as its process tree is
	// back, and its memory follows as it touches it and in the
	// background. Entries are as in Order, or "all". A workload counts as
	// restored, and the region is released, only once all of its pages
	// are in; one whose pages could not all be served is killed, counts
	// as failed and keeps its images. The others are restored in full.
	// The next wave (Order) starts once a lazy workload runs, not once
	// its pages are in.
	Lazy []string
	// State and Journal default to DefaultState and
	// journal.DefaultJournal.
	State, Journal string
	Logger         *slog.Logger
	// Events receives progress events (may be nil); it is called from
	// several goroutines.
	Events func(journal.Event)
}

// Result says what happened to each workload.
type Result struct {
	RegionID string           `json:"region_id"`
	Restored []WorkloadResult `json:"restored"`
	Failed   []WorkloadResult `json:"failed,omitempty"`
	Skipped  []string         `json:"already_restored,omitempty"`
	Released bool             `json:"released"`
	// UpdatePath and Target are the update's path (kexec, userspace,
	// reboot; "" for a bare suspend-all) and target kernel, from the
	// manifest; Bytes is the checkpoint's size.
	UpdatePath string `json:"update_path,omitempty"`
	Target     string `json:"target,omitempty"`
	Bytes      int64  `json:"bytes"`
	// SlotGiven says the fleet lock's reboot slot was given back.
	SlotGiven bool    `json:"slot_given,omitempty"`
	Seconds   float64 `json:"seconds"`
	// PeakExtraRAM is how far the host's memory use rose during the
	// restore above where it ended (the restored workloads' own memory):
	// staging, tools' buffers, page cache. Sampled every memwatch.Interval.
	PeakExtraRAM int64 `json:"peak_extra_ram"`
}

// WorkloadResult is one workload's restore.
type WorkloadResult struct {
	Key     string  `json:"key"`
	Seconds float64 `json:"seconds"`
	// PagesInS, for a lazy restore, is how long after its start the last
	// page was in (Seconds is when it ran again).
	PagesInS float64 `json:"pages_in_s,omitempty"`
	// BlackoutS runs from the workload's freeze by the suspend to the end
	// of its restore, when it runs again (wall clock, across the kexec).
	BlackoutS float64 `json:"blackout_s,omitempty"`
	Error     string  `json:"error,omitempty"`
}

// state is the progress of one checkpoint's resume, on disk.
type state struct {
	Checkpoint string   `json:"checkpoint"` // region id + creation time
	Restored   []string `json:"restored"`
	// Failed says why each workload that is not back failed last time.
	Failed map[string]string `json:"failed,omitempty"`
	// Lazy are the workloads that run, restored lazily, while their
	// pages come: should this resume end before they are all in, the
	// next one ends them (their pages may never come) and restores them
	// again.
	Lazy []string `json:"lazy,omitempty"`
}

// State is what ckpt status shows of a resume in progress.
type State = state

// ReadState reads the record of a resume (nil where there is none).
func ReadState(path string) *State {
	st := readState(path)
	if st.Checkpoint == "" {
		return nil
	}
	return &st
}

// ResumeAll restores every workload of the committed checkpoint in the
// region that is not restored yet. The error wraps ErrPartial when some
// failed (Result says which and why). The region is released only when
// every workload of the manifest is back and every object verified: a
// region with a bad object anywhere is kept, even one no workload names.
func ResumeAll(ctx context.Context, opts Options) (*Result, error) {
	unlock, err := journal.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	return ResumeHeld(ctx, opts)
}

// ResumeHeld is ResumeAll for a caller that holds journal.Lock (ckpt
// recover).
func ResumeHeld(ctx context.Context, opts Options) (*Result, error) {
	opts = opts.withDefaults()
	r, err := memregion.Open(opts.Region, memregion.Options{Logger: opts.Logger})
	if err != nil {
		return nil, err
	}
	defer r.Close()
	run := &resumeRun{opts: opts, log: opts.Logger, r: r, start: time.Now(), res: &Result{RegionID: r.ID()}}
	if err := run.verify(ctx); err != nil {
		return nil, err
	}
	run.res.Bytes, run.res.UpdatePath = run.m.TotalBytes(), run.m.Attributes["update_path"]
	if run.res.Target = run.m.Attributes["update_target"]; run.res.Target == "" {
		run.res.Target = run.m.Attributes["target_kernel"]
	}
	todo, err := run.pending()
	if err != nil {
		return nil, err
	}
	todo = run.thawOriginals(ctx, todo)
	run.endInterruptedLazy(ctx, todo)
	// A resume killed while it had huge pages on left them on.
	if err := thp.PutBack(); err != nil {
		run.log.Warn("transparent huge pages: madvise not put back", "error", err)
	}
	if opts.HugePages && len(todo) > 0 {
		undo, did, err := thp.AlwaysWhile()
		if err != nil {
			run.log.Warn("restoring with the host's huge page mode", "error", err)
		} else {
			run.log.Info(did)
		}
		defer func() {
			if err := undo(); err != nil {
				run.log.Warn("transparent huge pages: madvise not put back", "error", err)
			}
		}()
	}
	stopMemory := memwatch.Watch(opts.Region)
	for _, wave := range waves(todo, opts.Order) {
		run.restoreWave(ctx, wave)
	}
	run.lazy.Wait() // their pages: the region is in use until then
	run.res.PeakExtraRAM = stopMemory().AboveEnd()
	journal.Failpoint("restore:done")
	run.res.Seconds = time.Since(run.start).Seconds()
	if len(run.res.Failed) > 0 {
		return run.res, fmt.Errorf("%w: %d of %d failed, their images are kept; run resume-all again to retry", ErrPartial, len(run.res.Failed), len(todo))
	}
	return run.res, run.release()
}

func (o Options) withDefaults() Options {
	if o.Concurrency <= 0 {
		o.Concurrency = runtime.GOMAXPROCS(0)
	}
	if o.State == "" {
		o.State = DefaultState
	}
	if o.Journal == "" {
		o.Journal = journal.DefaultJournal
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// resumeRun is one ResumeAll under way; its phases are the methods below.
type resumeRun struct {
	opts  Options
	log   *slog.Logger
	r     *memregion.Region
	start time.Time
	res   *Result
	m     *memregion.Manifest
	bad   map[string]string // object → why it failed verification

	mu sync.Mutex // st and res, from the restore goroutines
	st state

	lazy sync.WaitGroup // lazy restores whose pages are still coming
}

func (run *resumeRun) emit(e journal.Event) { journal.Emit(run.opts.Events, e) }

// verify checks the manifest and every object. Objects that fail are
// remembered (their workloads are not restored, the region is kept); any
// other failure stops the resume before anything is restored or deleted.
func (run *resumeRun) verify(ctx context.Context) error {
	m, verr := run.r.Verify(ctx)
	if m == nil {
		return fmt.Errorf("region %s: %w (nothing was restored or deleted)", run.opts.Region, verr)
	}
	run.m, run.bad = m, map[string]string{}
	for _, e := range unwrapAll(verr) {
		var oe *memregion.ObjectError
		if errors.As(e, &oe) {
			run.bad[oe.Object] = oe.Reason
		} else if e != nil {
			return fmt.Errorf("region %s: %w (nothing was restored or deleted)", run.opts.Region, verr)
		}
	}
	for o, why := range run.bad {
		run.log.Error("object failed verification; the region will be kept", "object", o, "reason", why)
	}
	run.emit(journal.Event{Phase: "verify", Bytes: m.TotalBytes()})
	return nil
}

// id names the checkpoint in the resume state.
func (run *resumeRun) id() string {
	return run.r.ID() + "@" + run.m.Created.UTC().Format(time.RFC3339Nano)
}

// pending picks the workloads to restore: those of Only (or all) not
// restored yet by an earlier run.
func (run *resumeRun) pending() ([]memregion.WorkloadRecord, error) {
	run.st = readState(run.opts.State)
	if run.st.Checkpoint != run.id() {
		run.st = state{Checkpoint: run.id()}
	}
	only := map[string]bool{}
	for _, k := range run.opts.Only {
		only[k] = true
	}
	var todo []memregion.WorkloadRecord
	for _, rec := range run.m.Workloads {
		k := recordKey(rec)
		switch {
		case len(only) > 0 && !only[k]:
		case slices.Contains(run.st.Restored, k):
			run.res.Skipped = append(run.res.Skipped, k)
		default:
			todo = append(todo, rec)
		}
		delete(only, k)
	}
	for k := range only {
		return nil, fmt.Errorf("%s is not in the checkpoint", k)
	}
	return todo, nil
}

func recordKey(rec memregion.WorkloadRecord) string { return rec.Backend + "/" + rec.ID }

// restoreWave restores one wave's workloads in parallel. It returns once
// they run: lazy ones get their pages behind it (run.lazy).
func (run *resumeRun) restoreWave(ctx context.Context, wave []memregion.WorkloadRecord) {
	g := errgroup.Group{}
	g.SetLimit(run.opts.Concurrency)
	for _, rec := range wave {
		g.Go(func() error {
			t0 := time.Now()
			wait, err := run.restoreOne(ctx, rec, run.backend(rec.Backend))
			if wait == nil {
				run.done(rec, outcome{took: time.Since(t0), err: err})
				return nil
			}
			o := outcome{took: time.Since(t0), running: time.Now()}
			run.log.Info("running, its pages follow", "workload", recordKey(rec), "after", o.took.Round(time.Millisecond))
			run.emit(journal.Event{Phase: "running", Workload: recordKey(rec), Elapsed: o.took.Seconds()})
			run.lazyRunning(rec)
			run.lazy.Add(1)
			go func() {
				defer run.lazy.Done()
				o.err = wait()
				o.pagesIn = time.Since(t0)
				run.done(rec, o)
			}()
			return nil
		})
	}
	g.Wait()
}

// restoreOne restores one workload whose objects all verified; wait is
// non-nil for a lazy restore under way.
func (run *resumeRun) restoreOne(ctx context.Context, rec memregion.WorkloadRecord, b hypervisors.Backend) (wait func() error, err error) {
	for _, o := range rec.Objects {
		if why, ok := run.bad[o]; ok {
			return nil, fmt.Errorf("object %s: %s", o, why)
		}
	}
	if b == nil {
		return nil, fmt.Errorf("backend %s is not available on this host", rec.Backend)
	}
	w := hypervisors.Workload{ID: rec.ID, Kind: rec.Kind, Backend: rec.Backend, MemoryBytes: rec.MemoryBytes}
	src := hypervisors.RegionSource{Region: run.r, Manifest: run.m, Prefix: recordPrefix(rec, w)}
	if lr, ok := b.(hypervisors.LazyRestorer); ok && run.wantsLazy(rec) {
		wait, err := lr.RestoreLazy(ctx, w, rec.Restore, src)
		if !errors.Is(err, hypervisors.ErrNotSupported) {
			return wait, err
		}
		run.log.Info("restoring in full", "workload", recordKey(rec), "why", err)
	} else if run.wantsLazy(rec) {
		run.log.Info("restoring in full: its backend has no lazy restore", "workload", recordKey(rec))
	}
	return nil, b.Restore(ctx, w, rec.Restore, src)
}

// wantsLazy says whether Options.Lazy names rec.
func (run *resumeRun) wantsLazy(rec memregion.WorkloadRecord) bool {
	return slices.ContainsFunc(run.opts.Lazy, func(o string) bool { return o == "all" || names(o, rec) })
}

// names says whether an Order or Lazy entry names rec: its key, its
// kind or its backend.
func names(o string, rec memregion.WorkloadRecord) bool {
	return o == recordKey(rec) || o == rec.Kind || o == rec.Backend
}

// outcome is how one workload's restore went.
type outcome struct {
	took    time.Duration // until it ran (or failed)
	running time.Time     // when it ran again: the end of its blackout (zero: at done)
	pagesIn time.Duration // lazy: until its last page was in
	err     error
}

// done records one workload's outcome, on disk at once: a resume killed
// mid-way restores nothing twice.
func (run *resumeRun) done(rec memregion.WorkloadRecord, o outcome) {
	run.mu.Lock()
	defer run.mu.Unlock()
	k, took, err := recordKey(rec), o.took, o.err
	wr := WorkloadResult{Key: k, Seconds: took.Seconds(), PagesInS: o.pagesIn.Seconds()}
	if o.running.IsZero() {
		o.running = time.Now()
	}
	if rec.FrozenAt != nil && err == nil {
		wr.BlackoutS = o.running.Sub(*rec.FrozenAt).Seconds()
	}
	if err != nil {
		wr.Error = err.Error()
		run.res.Failed = append(run.res.Failed, wr)
		if run.st.Failed == nil {
			run.st.Failed = map[string]string{}
		}
		run.st.Failed[k] = wr.Error
		run.st.Lazy = slices.DeleteFunc(run.st.Lazy, func(l string) bool { return l == k })
		if err := writeState(run.opts.State, run.st); err != nil {
			run.log.Error("recording the failure", "err", err)
		}
		run.log.Error("restore failed; its images are kept", "workload", k, "err", err)
		run.emit(journal.Event{Phase: "restore", Workload: k, Error: err.Error()})
		return
	}
	run.res.Restored = append(run.res.Restored, wr)
	run.st.Restored = append(run.st.Restored, k)
	delete(run.st.Failed, k)
	run.st.Lazy = slices.DeleteFunc(run.st.Lazy, func(l string) bool { return l == k })
	if err := writeState(run.opts.State, run.st); err != nil {
		run.log.Error("recording the restore", "err", err)
	}
	run.emit(journal.Event{Phase: "restore", Workload: k, Elapsed: took.Seconds()})
	journal.Failpoint("restore:one")
}

// lazyRunning records, on disk at once, that rec runs while its pages
// come.
func (run *resumeRun) lazyRunning(rec memregion.WorkloadRecord) {
	run.mu.Lock()
	defer run.mu.Unlock()
	run.st.Lazy = append(run.st.Lazy, recordKey(rec))
	if err := writeState(run.opts.State, run.st); err != nil {
		run.log.Error("recording a lazy restore under way", "err", err)
	}
}

// endInterruptedLazy ends the workloads an earlier resume restored lazily
// and did not see through (it was killed): whether all their pages came
// is unknown, so they are ended (the backend's Finish) and restored
// again from the images, which the region kept.
func (run *resumeRun) endInterruptedLazy(ctx context.Context, todo []memregion.WorkloadRecord) {
	for _, rec := range todo {
		k := recordKey(rec)
		if !slices.Contains(run.st.Lazy, k) {
			continue
		}
		run.log.Warn("an earlier resume restored this lazily and ended before all its pages were in: ending it, to restore it again", "workload", k)
		if b := run.backend(rec.Backend); b != nil {
			w := hypervisors.Workload{ID: rec.ID, Kind: rec.Kind, Backend: rec.Backend, MemoryBytes: rec.MemoryBytes}
			if err := b.Finish(ctx, w); err != nil {
				run.log.Warn("ending it", "workload", k, "err", err)
			}
		}
		run.st.Lazy = slices.DeleteFunc(run.st.Lazy, func(l string) bool { return l == k })
	}
}

// thawOriginals handles a resume on the boot that made the checkpoint
// (no kexec yet: suspend-all --no-kexec, or one killed after its commit):
// a workload whose original still exists, frozen, is thawed rather than
// restored a second time beside it; the rest are restored. It returns
// those.
func (run *resumeRun) thawOriginals(ctx context.Context, todo []memregion.WorkloadRecord) []memregion.WorkloadRecord {
	j, _ := journal.Read(run.opts.Journal)
	if j == nil || j.State != journal.StateCommitted || j.BootID != journal.BootID() {
		return todo
	}
	byKey := map[string]hypervisors.Workload{}
	for _, w := range j.Workloads {
		byKey[w.Backend+"/"+w.ID] = w
	}
	var rest []memregion.WorkloadRecord
	for _, rec := range todo {
		k := recordKey(rec)
		w, ok := byKey[k]
		b := run.backend(rec.Backend)
		if !ok || b == nil {
			rest = append(rest, rec)
			continue
		}
		t0 := time.Now()
		switch err := b.Thaw(ctx, w); {
		case err == nil:
			run.log.Info("the original was still there, frozen: thawed instead of restored", "workload", k)
			run.done(rec, outcome{took: time.Since(t0)})
		case errors.Is(err, hypervisors.ErrNotFound):
			rest = append(rest, rec)
		default:
			run.done(rec, outcome{took: time.Since(t0), err: fmt.Errorf("its original is still there and could not be thawed: %w", err)})
		}
	}
	return rest
}

func (run *resumeRun) backend(name string) hypervisors.Backend {
	for _, b := range run.opts.Backends {
		if b.Name() == name {
			return b
		}
	}
	return nil
}

// clearRebootRequired removes what asked for the update (ckpt update)
// once it is done: the kernel now runs is the one it updated into.
func (run *resumeRun) clearRebootRequired() {
	target := run.m.Attributes["update_target"]
	if target == "" || target != update.RunningKernel() {
		return
	}
	if err := update.ClearRebootRequired("/"); err != nil {
		run.log.Warn("clearing reboot-required", "err", err)
	}
}

// ErrKept is wrapped when every workload is back but the region is kept
// because some object failed verification.
var ErrKept = errors.New("the region is kept")

// release drops the checkpoint once every workload of the manifest is
// back and every object verified.
func (run *resumeRun) release() error {
	if run.opts.KeepRegion {
		return nil
	}
	for _, rec := range run.m.Workloads {
		if !slices.Contains(run.st.Restored, recordKey(rec)) {
			return nil // others are still to come (Only)
		}
	}
	run.giveSlot()
	if len(run.bad) > 0 {
		return fmt.Errorf("%w: %d object(s) failed verification (ckpt region verify says which); release it yourself (ckpt region release) once you no longer need it", ErrKept, len(run.bad))
	}
	if err := run.r.Release(); err != nil {
		return fmt.Errorf("every workload is back, but releasing the region failed: %w", err)
	}
	run.res.Released = true
	run.clearRebootRequired()
	os.Remove(run.opts.State)
	if j, _ := journal.Read(run.opts.Journal); j != nil && j.State == journal.StateCommitted {
		j.Remove()
	}
	run.emit(journal.Event{Phase: "release"})
	return nil
}

// giveSlot gives back the fleet lock's reboot slot that the suspend
// took, now that every workload is back.
func (run *resumeRun) giveSlot() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	record := fleetlock.Record(run.opts.Journal)
	if held, _ := fleetlock.Held(record); held == nil {
		return
	}
	if err := fleetlock.Give(ctx, record); err != nil {
		run.log.Warn("every workload is back, but the reboot slot is still held: ckpt resume-all --if-committed gives it back at the next boot", "record", record, "err", err)
		return
	}
	run.res.SlotGiven = true
}

// waves splits records by the Order list: one wave per entry, then the
// rest.
func waves(recs []memregion.WorkloadRecord, order []string) [][]memregion.WorkloadRecord {
	var out [][]memregion.WorkloadRecord
	left := recs
	for _, o := range order {
		var wave, rest []memregion.WorkloadRecord
		for _, r := range left {
			if names(o, r) {
				wave = append(wave, r)
			} else {
				rest = append(rest, r)
			}
		}
		if len(wave) > 0 {
			out = append(out, wave)
		}
		left = rest
	}
	if len(left) > 0 {
		out = append(out, left)
	}
	return out
}

func unwrapAll(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func readState(path string) state {
	var st state
	if b, err := os.ReadFile(path); err == nil {
		json.Unmarshal(b, &st)
	}
	return st
}

func writeState(path string, st state) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, b, 0o600)
}

// legacyName is how manifests without a prefix (before ckpt recorded it)
// named a workload's objects.
var legacyName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// recordPrefix is the workload's object prefix as its suspend recorded
// it; manifests written before the prefix was recorded used legacyName.
func recordPrefix(rec memregion.WorkloadRecord, w hypervisors.Workload) string {
	if rec.Prefix != "" {
		return rec.Prefix
	}
	return legacyName.ReplaceAllString(w.Backend, "_") + "/" + legacyName.ReplaceAllString(w.ID, "_")
}
