package checkpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ckpt-dev/ckpt/fleetlock"
	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/internal/memwatch"
	"github.com/ckpt-dev/ckpt/journal"
	"github.com/ckpt-dev/ckpt/memregion"
	"golang.org/x/sync/errgroup"
)

// DefaultCleanupTimeout bounds a rollback, a finish and a recover, which
// run on a context detached from the caller's (Options.CleanupTimeout).
// A rollback may have to restore a workload its dump ended.
const DefaultCleanupTimeout = 10 * time.Minute

// detached is ctx without its cancel, with a deadline of its own: for the
// steps a cancel must not cut short.
func detached(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

// Suspend runs a plan: pre-dump (optional), freeze all, dump in parallel,
// seal, end the originals. Before the seal any failure, a cancelled ctx
// included, rolls back (every freeze that was issued is undone); after
// it the checkpoint is committed and the region is what resume-all
// restores from.
func Suspend(ctx context.Context, p *Plan) (*Result, error) {
	if len(p.Problems) > 0 {
		return nil, &PlanError{Problems: p.Problems}
	}
	unlock, err := Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	opts := p.Options
	if err := RecoverIfNeeded(ctx, opts.Journal, opts.Backends, opts.Logger); err != nil {
		return nil, err
	}
	// Nothing may reboot the host while workloads are frozen or half
	// dumped; the inhibitor is dropped when Suspend returns (the kexec
	// that follows is ckpt's own).
	release, err := InhibitShutdown(ctx, "suspending every workload into the preserved region")
	if errors.Is(err, ErrNoLogind) {
		opts.Logger.Debug("no shutdown inhibitor", "reason", err)
	} else if err != nil {
		return nil, err
	}
	defer release()
	r, err := memregion.Open(opts.Region, memregion.Options{Logger: opts.Logger})
	if err != nil {
		return nil, &PhaseError{Phase: "open region", Err: err}
	}
	defer r.Close()
	journal.Failpoint("plan")
	if opts.FleetLock != nil && !opts.DryRun {
		giveBack, err := takeSlot(ctx, opts)
		if err != nil {
			return nil, err
		}
		committed := false
		defer func() { giveBack(committed) }()
		res, err := suspend(ctx, p, r)
		committed = res != nil
		return res, err
	}
	return suspend(ctx, p, r)
}

// suspend runs the phases of Suspend from the journal on.
func suspend(ctx context.Context, p *Plan, r *memregion.Region) (*Result, error) {
	s := newSuspendRun(p, r)
	if err := s.saveJournal(); err != nil {
		return nil, &PhaseError{Phase: "journal", Err: err}
	}
	journal.Failpoint("journal")
	for _, phase := range []func(context.Context) error{s.preDump, s.freezeAll, s.dumpAll} {
		if err := phase(ctx); err != nil {
			return nil, err
		}
	}
	if p.Options.DryRun {
		return s.endDryRun(ctx)
	}
	if err := s.seal(ctx); err != nil {
		return nil, err
	}
	return s.res, s.finishAll(ctx)
}

// takeSlot takes the fleet lock's slot and returns what gives it back
// unless the suspend committed: only when its rollback left no journal
// (nothing frozen); otherwise ckpt recover gives it back.
func takeSlot(ctx context.Context, opts Options) (giveBack func(committed bool), err error) {
	record := fleetlock.Record(opts.Journal)
	opts.emit(Event{Phase: "fleet-lock"})
	opts.Logger.Info("taking a reboot slot", "lock", opts.FleetLock.URL, "group", opts.FleetLock.WithDefaults().Group)
	if err := fleetlock.Take(ctx, *opts.FleetLock, record); err != nil {
		return nil, &PhaseError{Phase: "fleet lock", Err: fmt.Errorf("%w; nothing was frozen", err)}
	}
	journal.Failpoint("fleet-lock")
	return func(committed bool) {
		if committed {
			return
		}
		if j, _ := journal.Read(opts.Journal); j != nil {
			return
		}
		gctx, cancel := detached(ctx, time.Minute)
		defer cancel()
		if err := fleetlock.Give(gctx, record); err != nil {
			opts.Logger.Warn("the reboot slot is still held", "record", record, "err", err)
		}
	}, nil
}

// suspendRun is one Suspend under way; its phases are the methods below.
type suspendRun struct {
	p    *Plan
	opts Options
	log  *slog.Logger
	r    *memregion.Region
	res  *Result

	jmu sync.Mutex // j is saved from the dump goroutines (rescues)
	j   *Journal

	tried    []bool // a freeze was issued: rollback undoes every one
	frozenAt []time.Time
	records  []memregion.WorkloadRecord
}

func newSuspendRun(p *Plan, r *memregion.Region) *suspendRun {
	opts := p.Options
	s := &suspendRun{p: p, opts: opts, log: opts.Logger, r: r,
		res:      &Result{RegionID: r.ID(), Concurrency: opts.Concurrency, Phases: map[string]float64{}},
		j:        &Journal{Path: opts.Journal, Region: opts.Region, State: StateFreezing},
		tried:    make([]bool, len(p.Workloads)),
		frozenAt: make([]time.Time, len(p.Workloads)),
		records:  make([]memregion.WorkloadRecord, len(p.Workloads)),
	}
	for _, pl := range p.Workloads {
		s.j.Workloads = append(s.j.Workloads, pl.Workload)
	}
	s.res.Workloads = make([]WorkloadResult, len(p.Workloads))
	return s
}

func (s *suspendRun) phase(name string, start time.Time) {
	s.res.Phases[name] = time.Since(start).Seconds()
}

func (s *suspendRun) saveJournal() error {
	s.jmu.Lock()
	defer s.jmu.Unlock()
	return s.j.Save()
}

// rescue journals how to bring back a workload its dump is about to end
// (hypervisors.Rescuer), before the backend goes on.
func (s *suspendRun) rescue(key string, record json.RawMessage) error {
	s.jmu.Lock()
	defer s.jmu.Unlock()
	if s.j.Rescues == nil {
		s.j.Rescues = map[string]json.RawMessage{}
	}
	s.j.Rescues[key] = record
	if err := s.j.Save(); err != nil {
		return err
	}
	journal.Failpoint("dump:rescue")
	return nil
}

// preDump copies memory ahead of the freeze, where backends can: first
// one workload at a time (CRIU's pre-dumps, which leave nothing behind),
// then the live ones (hypervisors.LivePreDumper: the VMs' pre-copies,
// whose VMs QEMU stops at their end) all at once, right before the
// freeze, so that none waits long stopped for the others.
func (s *suspendRun) preDump(ctx context.Context) error {
	if !s.opts.PreDump {
		return nil
	}
	start := time.Now()
	var live []int
	for i, pl := range s.p.Workloads {
		pd, ok := pl.backend.(hypervisors.PreDumper)
		if !ok {
			continue
		}
		if _, ok := pd.(hypervisors.LivePreDumper); ok {
			live = append(live, i)
			continue
		}
		if err := s.preDumpOne(ctx, i, pd); err != nil {
			return s.rollback(ctx, "pre-dump", pl.Key, err)
		}
	}
	if len(live) > 0 {
		// What they start runs on until the Dump: journalled and undone
		// (Thaw) like a freeze.
		for _, i := range live {
			s.j.Freezes = append(s.j.Freezes, s.p.Workloads[i].Key)
			s.tried[i] = true
		}
		if err := s.saveJournal(); err != nil {
			return s.rollback(ctx, "journal", "", err)
		}
		g, gctx := errgroup.WithContext(ctx)
		var first firstKey
		for _, i := range live {
			g.Go(func() error {
				err := s.preDumpOne(gctx, i, s.p.Workloads[i].backend.(hypervisors.PreDumper))
				if err != nil {
					first.set(s.p.Workloads[i].Key)
				}
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return s.rollback(ctx, "pre-dump", first.get(), err)
		}
	}
	s.phase("predump", start)
	return nil
}

// preDumpOne pre-dumps workload i; a backend that cannot (here, now) is
// no failure.
func (s *suspendRun) preDumpOne(ctx context.Context, i int, pd hypervisors.PreDumper) error {
	pl := s.p.Workloads[i]
	err := pd.PreDump(ctx, pl.Workload, hypervisors.RegionSink{Region: s.r, Prefix: ObjectPrefix(pl.Workload)})
	if errors.Is(err, hypervisors.ErrNotSupported) {
		s.log.Info("no pre-dump", "workload", pl.Key, "reason", err)
		return nil
	}
	if err == nil {
		s.opts.emit(Event{Phase: "predump", Workload: pl.Key})
	}
	return err
}

// freezeAll freezes every workload at once. Every freeze is journalled
// before it is issued and counts as tried from then on: a QMP "stop" or a
// cgroup freeze cut short by a sibling's failure may still take effect.
func (s *suspendRun) freezeAll(ctx context.Context) error {
	start := time.Now()
	for _, pl := range s.p.Workloads {
		if !slices.Contains(s.j.Freezes, pl.Key) {
			s.j.Freezes = append(s.j.Freezes, pl.Key)
		}
	}
	if err := s.saveJournal(); err != nil {
		return s.rollback(ctx, "journal", "", err)
	}
	journal.Failpoint("freeze:start")
	g, gctx := errgroup.WithContext(ctx)
	var first firstKey
	var mu sync.Mutex
	for i, pl := range s.p.Workloads {
		s.tried[i] = true
		g.Go(func() error {
			if err := pl.backend.Freeze(gctx, pl.Workload); err != nil {
				first.set(pl.Key)
				return err
			}
			mu.Lock()
			s.frozenAt[i] = time.Now()
			mu.Unlock()
			journal.Failpoint("freeze:one")
			s.opts.emit(Event{Phase: "freeze", Workload: pl.Key})
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return s.rollback(ctx, "freeze", first.get(), err)
	}
	if err := ctx.Err(); err != nil {
		return s.rollback(ctx, "freeze", "", err)
	}
	s.j.State = StateFrozen
	if err := s.saveJournal(); err != nil {
		return s.rollback(ctx, "journal", "", err)
	}
	journal.Failpoint("freeze:done")
	s.phase("freeze", start)
	return nil
}

// firstKey remembers the first workload that failed.
type firstKey struct {
	mu  sync.Mutex
	key string
}

func (f *firstKey) set(k string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.key == "" {
		f.key = k
	}
}

func (f *firstKey) get() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.key
}

// rollback undoes the suspend before its commit: every tried freeze is
// thawed (each backend's Thaw returns only once the thaw holds), then the
// region's objects are dropped, on a detached ctx with its own deadline.
// The journal goes only when every thaw succeeded, so that ckpt recover
// can try the rest again.
func (s *suspendRun) rollback(ctx context.Context, ph, key string, cause error) error {
	if cerr := ctx.Err(); cerr != nil {
		// Interrupted (Ctrl-C, SIGTERM) or timed out: that is the
		// cause, not the workload whose call it happened to cut.
		if key != "" {
			s.log.Debug("cut short by the cancel", "workload", key, "err", cause)
		}
		key, cause = "", fmt.Errorf("%w: interrupted or timed out, before the commit", cerr)
	}
	s.opts.emit(Event{Phase: "rollback", Workload: key, Error: cause.Error()})
	s.log.Warn("rolling back", "phase", ph, "workload", key, "err", cause)
	rctx, cancel := detached(ctx, s.opts.CleanupTimeout)
	defer cancel()
	errs := s.thawAll(rctx)
	if err := s.r.Discard(); err != nil { // after the thaws: see hypervisors.Backend.Thaw
		errs = append(errs, fmt.Errorf("discard region: %w", err))
	}
	rb := errors.Join(errs...)
	if rb == nil {
		s.j.Remove()
	}
	return &PhaseError{Phase: ph, Workload: key, Err: cause, Rollback: rb}
}

// thawAll thaws, in parallel, every workload whose freeze was tried.
func (s *suspendRun) thawAll(ctx context.Context) []error {
	var errs []error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, pl := range s.p.Workloads {
		if !s.tried[i] {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := pl.backend.Thaw(ctx, pl.Workload); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("thaw %s: %w", pl.Key, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errs
}

// dumpAll dumps every workload (see dumpParallel) and rolls back on the
// first failure.
func (s *suspendRun) dumpAll(ctx context.Context) error {
	start := time.Now()
	stopProgress := watchProgress(s.r, s.p.Bytes, s.opts)
	stopMemory := memwatch.Watch(s.opts.Region)
	err := s.dumpParallel(ctx)
	stopProgress()
	s.res.PeakExtraRAM = stopMemory().Peak
	var de *dumpError
	switch {
	case errors.As(err, &de):
		return s.rollback(ctx, "dump", de.key, de.err)
	case err != nil:
		return s.rollback(ctx, "dump", "", err)
	}
	journal.Failpoint("dump:done")
	took := time.Since(start)
	s.phase("dump", start)
	for i := range s.records {
		s.res.Bytes += s.res.Workloads[i].Bytes
	}
	s.res.GBps = float64(s.res.Bytes) / took.Seconds() / 1e9
	if s.res.Bytes > 0 {
		lr := lastRun{Time: time.Now(), Bytes: s.res.Bytes, DumpGBps: s.res.GBps, Concurrency: s.opts.Concurrency, DryRun: s.opts.DryRun}
		if err := saveLastRun(s.opts.Journal, lr); err != nil {
			s.log.Warn("recording the dump rate", "err", err)
		}
	}
	return nil
}

type dumpError struct {
	key string
	err error
}

func (e *dumpError) Error() string { return e.key + ": " + e.err.Error() }
func (e *dumpError) Unwrap() error { return e.err }

// dumpParallel dumps every workload with at most Concurrency at once, in
// plan order: largest first, so the longest dumps do not start last.
// (A byte budget of the Concurrency largest workloads, which this once
// also kept, never bound: in that order no Concurrency workloads can
// weigh more than the largest ones.) The first failure cancels the others; it returns only
// once every dump has returned (and each backend waits for its own tools).
func (s *suspendRun) dumpParallel(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.opts.Concurrency)
	for i, pl := range s.p.Workloads {
		if gctx.Err() != nil {
			break // a dump failed or ctx is done; g.Wait reports it
		}
		g.Go(func() error { return s.dumpOne(gctx, i, pl) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

// dumpOne dumps workload i and records its manifest entry and result.
func (s *suspendRun) dumpOne(ctx context.Context, i int, pl Planned) error {
	start := time.Now()
	pre := ObjectPrefix(pl.Workload)
	sink := hypervisors.RegionSink{Region: s.r, Prefix: pre,
		Rescue: func(rec json.RawMessage) error { return s.rescue(pl.Key, rec) }}
	recipe, err := pl.backend.Dump(ctx, pl.Workload, sink)
	if err != nil {
		return &dumpError{key: pl.Key, err: err}
	}
	var objs []string
	var n int64
	for _, o := range s.r.Objects() {
		if strings.HasPrefix(o.Name, pre+"/") {
			objs = append(objs, o.Name)
			n += o.Size
		}
	}
	w := pl.Workload
	frozenAt := s.frozenAt[i]
	s.records[i] = memregion.WorkloadRecord{ID: w.ID, Kind: w.Kind, Backend: w.Backend, MemoryBytes: w.MemoryBytes,
		Prefix: pre, Objects: objs, Restore: recipe, FrozenAt: &frozenAt}
	s.res.Workloads[i] = WorkloadResult{Key: pl.Key, Bytes: n, DumpS: time.Since(start).Seconds()}
	s.opts.emit(Event{Phase: "dump", Workload: pl.Key, Bytes: n, Elapsed: time.Since(start).Seconds()})
	journal.Failpoint("dump:one")
	return nil
}

// endDryRun rolls a dry run back (ckpt bench): every workload runs on.
func (s *suspendRun) endDryRun(ctx context.Context) (*Result, error) {
	now := time.Now()
	for i := range s.res.Workloads {
		s.res.Workloads[i].FrozenS = now.Sub(s.frozenAt[i]).Seconds()
	}
	var pe *PhaseError
	if err := s.rollback(ctx, "dry run", "", errors.New("dry run")); errors.As(err, &pe) && pe.Rollback != nil {
		return s.res, pe.Rollback
	}
	s.phase("rollback", now)
	return s.res, nil
}

// seal writes the manifest: the commit point.
func (s *suspendRun) seal(ctx context.Context) error {
	start := time.Now()
	if err := ctx.Err(); err != nil {
		return s.rollback(ctx, "seal", "", err)
	}
	attrs := map[string]string{"concurrency": fmt.Sprint(s.opts.Concurrency), "dump_gbps": fmt.Sprintf("%.3f", s.res.GBps)}
	for k, v := range s.opts.Attributes {
		attrs[k] = v
	}
	m := &memregion.Manifest{Workloads: s.records, Attributes: attrs}
	journal.Failpoint("seal:before")
	if err := s.r.Seal(ctx, m); err != nil {
		return s.rollback(ctx, "seal", "", err)
	}
	journal.Failpoint("seal:done")
	sealedAt := time.Now()
	s.phase("seal", start)
	s.opts.emit(Event{Phase: "seal", Bytes: s.res.Bytes})
	s.j.State = StateCommitted
	if err := s.saveJournal(); err != nil {
		s.log.Error("journal", "err", err)
	}
	for i := range s.res.Workloads {
		s.res.Workloads[i].FrozenS = sealedAt.Sub(s.frozenAt[i]).Seconds()
	}
	return nil
}

// finishAll ends the originals, whose only copy is now the region, on a
// detached ctx: a cancel after the commit must not leave them half ended.
func (s *suspendRun) finishAll(ctx context.Context) error {
	start := time.Now()
	fctx, cancel := detached(ctx, s.opts.CleanupTimeout)
	defer cancel()
	var errs []error
	for i, pl := range s.p.Workloads {
		if err := pl.backend.Finish(fctx, pl.Workload); err != nil {
			errs = append(errs, fmt.Errorf("finish %s: %w", pl.Key, err))
			continue
		}
		s.res.Workloads[i].FinishOK = true
		journal.Failpoint("finish:one")
		s.opts.emit(Event{Phase: "finish", Workload: pl.Key})
	}
	journal.Failpoint("finish:done")
	s.phase("finish", start)
	s.opts.emit(Event{Phase: "done", Bytes: s.res.Bytes})
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("checkpoint committed, but some originals still exist (stop them before resume-all): %w", err)
	}
	return nil
}
