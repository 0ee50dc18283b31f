package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ckpt-dev/ckpt/checkpoint/kexec"
	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/memregion"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"
)

// Options configure a suspend. Zero values mean defaults.
type Options struct {
	// Region is the region's path (a pmem device, a file, a directory); it
	// must be formatted.
	Region string
	// Backends are the loaded backends (hypervisors.Load).
	Backends []hypervisors.Backend
	// Concurrency is how many workloads dump at once (default: measured,
	// see MeasureConcurrency, at most 4).
	Concurrency int
	// Headroom is extra space the region must have beyond the workloads'
	// memory (default 10 % + 64 MiB: images carry metadata).
	Headroom int64
	// PreDump copies memory ahead of the freeze where backends can.
	PreDump bool
	// Only restricts the suspend to these workload keys ("backend/id").
	Only []string
	// DryRun freezes and dumps as a real suspend does, then rolls back
	// instead of sealing: every workload runs on, and the Result has the
	// timings (ckpt bench).
	DryRun bool
	// Journal is the journal's path (default /var/lib/ckpt/journal.json).
	Journal string
	// Attributes are recorded in the manifest (target kernel, …).
	Attributes map[string]string
	// Kexec is the kernel the caller will kexec into after the suspend
	// (nil: none, the caller reboots or soft-reboots); the plan checks it.
	Kexec *kexec.Image
	// Logger receives the engine's logs (default: discard).
	Logger *slog.Logger
	// Events receives progress events (may be nil). It is called from
	// several goroutines.
	Events func(Event)

	measured []Bandwidth // how Concurrency was chosen
}

func (o Options) withDefaults() Options {
	if o.Concurrency <= 0 {
		o.Concurrency, o.measured = MeasureConcurrency(min(runtime.NumCPU(), 4))
	}
	if o.Journal == "" {
		o.Journal = DefaultJournal
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Event is one step of progress, for progress bars and JSON lines.
type Event struct {
	Time     time.Time `json:"time"`
	Phase    string    `json:"phase"` // plan, predump, freeze, dump, progress, seal, finish, rollback, done
	Workload string    `json:"workload,omitempty"`
	Bytes    int64     `json:"bytes,omitempty"`
	// Total is, in "progress" events, the bytes the plan expects to dump
	// (Bytes is what the region has received so far).
	Total   int64   `json:"total,omitempty"`
	Elapsed float64 `json:"elapsed_s,omitempty"`
	Error   string  `json:"error,omitempty"`
}

func (o Options) emit(e Event) {
	if o.Events != nil {
		e.Time = time.Now()
		o.Events(e)
	}
}

// Planned is one workload a suspend will take.
type Planned struct {
	Key      string `json:"key"` // backend/id
	Workload hypervisors.Workload
	Bytes    int64  `json:"bytes"`             // estimated dump size
	Problem  string `json:"problem,omitempty"` // why it cannot be suspended
	backend  hypervisors.Backend
}

// Plan is the result of planning: what would be frozen, how many bytes,
// and everything that blocks the suspend.
type Plan struct {
	Options     Options   `json:"-"`
	Workloads   []Planned `json:"workloads"`
	Bytes       int64     `json:"bytes"`
	RegionFree  int64     `json:"region_free"`
	RegionTotal int64     `json:"region_total"`
	Problems    []string  `json:"problems,omitempty"`
	// Warnings do not block the suspend but may fight it (HostWarnings).
	Warnings []string `json:"warnings,omitempty"`
	// Kexec is the kernel the plan checked (Options.Kexec).
	Kexec *kexec.Image `json:"kexec,omitempty"`
	// EstimatedFrozenS is how long the dump should keep workloads frozen,
	// from EstimateBasis.
	EstimatedFrozenS float64 `json:"estimated_frozen_s"`
	EstimateBasis    string  `json:"estimate_basis,omitempty"`
}

// Key names a workload across backends.
func Key(w hypervisors.Workload) string { return w.Backend + "/" + w.ID }

// PlanError is a plan that found problems; nothing was touched.
type PlanError struct{ Problems []string }

func (e *PlanError) Error() string {
	s := fmt.Sprintf("the plan found %d problem(s); nothing was touched:", len(e.Problems))
	for _, p := range e.Problems {
		s += "\n  - " + p
	}
	return s
}

// NewPlan discovers and sizes every workload, runs every preflight and
// checks the region. It changes nothing. A plan with problems is returned
// together with a *PlanError.
func NewPlan(ctx context.Context, opts Options) (*Plan, error) {
	opts = opts.withDefaults()
	p := &Plan{Options: opts}
	only := map[string]bool{}
	for _, k := range opts.Only {
		only[k] = true
	}
	for _, b := range opts.Backends {
		ws, err := b.Discover(ctx)
		if err != nil {
			p.Problems = append(p.Problems, fmt.Sprintf("backend %s: discovery: %v", b.Name(), err))
			continue
		}
		for _, w := range ws {
			k := Key(w)
			if len(only) > 0 && !only[k] {
				continue
			}
			delete(only, k)
			pl := Planned{Key: k, Workload: w, Bytes: w.MemoryBytes, backend: b}
			if se, ok := b.(hypervisors.SizeEstimator); ok {
				if n, err := se.EstimateSize(ctx, w); err == nil {
					pl.Bytes = n
				}
			}
			if pf, ok := b.(hypervisors.Preflighter); ok {
				if err := pf.Preflight(ctx, w); err != nil {
					pl.Problem = err.Error()
					p.Problems = append(p.Problems, fmt.Sprintf("%s: %v", k, err))
				}
			}
			p.Workloads = append(p.Workloads, pl)
			p.Bytes += pl.Bytes
		}
	}
	for k := range only {
		p.Problems = append(p.Problems, fmt.Sprintf("%s: no such workload", k))
	}
	// Largest first: the dump scheduler's order.
	sort.SliceStable(p.Workloads, func(i, j int) bool { return p.Workloads[i].Bytes > p.Workloads[j].Bytes })
	r, err := memregion.Open(opts.Region, memregion.Options{Logger: opts.Logger})
	if err != nil {
		p.Problems = append(p.Problems, fmt.Sprintf("region %s: %v", opts.Region, err))
	} else {
		defer r.Close()
		p.RegionTotal, p.RegionFree, _ = r.Space()
		if sealed, err := r.Sealed(); err != nil || sealed {
			p.Problems = append(p.Problems, fmt.Sprintf("region %s holds a committed checkpoint: resume it (ckpt resume-all) or release it first", opts.Region))
		} else if err := r.Fits(p.Bytes + p.headroom()); err != nil {
			p.Problems = append(p.Problems, fmt.Sprintf("region %s: %v (workloads %s + headroom %s)", opts.Region, err,
				memregion.HumanBytes(p.Bytes), memregion.HumanBytes(p.headroom())))
		}
	}
	p.Warnings = HostWarnings()
	p.Kexec = opts.Kexec
	p.checkKexec()
	p.estimateFrozen()
	for _, w := range p.Warnings {
		opts.Logger.Warn("plan", "warning", w)
	}
	opts.emit(Event{Phase: "plan", Bytes: p.Bytes})
	if len(p.Problems) > 0 {
		return p, &PlanError{Problems: p.Problems}
	}
	return p, nil
}

func (p *Plan) headroom() int64 {
	if p.Options.Headroom > 0 {
		return p.Options.Headroom
	}
	return p.Bytes/10 + 64<<20
}

// Result describes a committed suspend.
type Result struct {
	RegionID    string             `json:"region_id"`
	Workloads   []WorkloadResult   `json:"workloads"`
	Bytes       int64              `json:"bytes"`
	Concurrency int                `json:"concurrency"`
	Bandwidth   []Bandwidth        `json:"memcpy_bandwidth,omitempty"` // how Concurrency was chosen
	GBps        float64            `json:"dump_gbps"`
	Phases      map[string]float64 `json:"phases_s"`
}

// WorkloadResult is one workload's suspend.
type WorkloadResult struct {
	Key      string  `json:"key"`
	Bytes    int64   `json:"bytes"`
	FrozenS  float64 `json:"frozen_s"` // from its freeze to the commit
	DumpS    float64 `json:"dump_s"`
	FinishOK bool    `json:"finished"`
}

// PhaseError says which workload failed in which phase; the suspend was
// rolled back.
type PhaseError struct {
	Phase    string
	Workload string // "" for the region or the engine
	Err      error
	Rollback error // nil when every workload runs again
}

func (e *PhaseError) Error() string {
	s := "suspend failed in " + e.Phase
	if e.Workload != "" {
		s += " of " + e.Workload
	}
	s += ": " + e.Err.Error()
	if e.Rollback != nil {
		s += "\nrollback was incomplete: " + e.Rollback.Error()
	} else {
		s += "\nrolled back: every workload runs on the old kernel"
	}
	return s
}

func (e *PhaseError) Unwrap() error { return e.Err }

var objName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// ObjectPrefix is a workload's directory of objects in the region.
func ObjectPrefix(w hypervisors.Workload) string {
	return objName.ReplaceAllString(w.Backend, "_") + "/" + objName.ReplaceAllString(w.ID, "_")
}

// Suspend runs a plan: pre-dump (optional), freeze all, dump in parallel,
// seal, end the originals. Before the seal any failure, a cancelled ctx
// included, rolls back; after it the checkpoint is committed and the
// region is what resume-all restores from.
func Suspend(ctx context.Context, p *Plan) (*Result, error) {
	opts := p.Options
	log := opts.Logger
	if len(p.Problems) > 0 {
		return nil, &PlanError{Problems: p.Problems}
	}
	unlock, err := Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := RecoverIfNeeded(context.WithoutCancel(ctx), opts.Journal, opts.Backends, log); err != nil {
		return nil, err
	}
	// Nothing may reboot the host while workloads are frozen or half
	// dumped; the inhibitor is dropped when Suspend returns (the kexec
	// that follows is ckpt's own).
	release, err := InhibitShutdown(ctx, "suspending every workload into the preserved region")
	if errors.Is(err, ErrNoLogind) {
		log.Debug("no shutdown inhibitor", "reason", err)
	} else if err != nil {
		return nil, err
	}
	defer release()
	r, err := memregion.Open(opts.Region, memregion.Options{Logger: log})
	if err != nil {
		return nil, &PhaseError{Phase: "open region", Err: err}
	}
	defer r.Close()
	res := &Result{RegionID: r.ID(), Concurrency: opts.Concurrency, Bandwidth: opts.measured, Phases: map[string]float64{}}
	phase := func(name string, start time.Time) { res.Phases[name] = time.Since(start).Seconds() }

	j := &Journal{Path: opts.Journal, Region: opts.Region, State: StateFreezing}
	for _, pl := range p.Workloads {
		j.Workloads = append(j.Workloads, pl.Workload)
	}
	if err := j.Save(); err != nil {
		return nil, &PhaseError{Phase: "journal", Err: err}
	}

	frozen := make([]bool, len(p.Workloads))
	frozenAt := make([]time.Time, len(p.Workloads))
	rollback := func(ph, key string, cause error) error {
		if cerr := ctx.Err(); cerr != nil {
			// Interrupted (Ctrl-C, SIGTERM) or timed out: that is the
			// cause, not the workload whose call it happened to cut.
			if key != "" {
				log.Debug("cut short by the cancel", "workload", key, "err", cause)
			}
			key, cause = "", fmt.Errorf("%w: interrupted or timed out, before the commit", cerr)
		}
		opts.emit(Event{Phase: "rollback", Workload: key, Error: cause.Error()})
		log.Warn("rolling back", "phase", ph, "workload", key, "err", cause)
		rctx := context.WithoutCancel(ctx) // a cancelled ctx must not stop the thaw
		var errs []error
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i, pl := range p.Workloads {
			if !frozen[i] {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := pl.backend.Thaw(rctx, pl.Workload); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("thaw %s: %w", pl.Key, err))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if err := r.Discard(); err != nil { // after the thaws: see hypervisors.Backend.Thaw
			errs = append(errs, fmt.Errorf("discard region: %w", err))
		}
		rb := errors.Join(errs...)
		if rb == nil {
			j.Remove()
		}
		return &PhaseError{Phase: ph, Workload: key, Err: cause, Rollback: rb}
	}

	if opts.PreDump {
		start := time.Now()
		for _, pl := range p.Workloads {
			pd, ok := pl.backend.(hypervisors.PreDumper)
			if !ok {
				continue
			}
			err := pd.PreDump(ctx, pl.Workload, hypervisors.RegionSink{Region: r, Prefix: ObjectPrefix(pl.Workload)})
			if errors.Is(err, hypervisors.ErrNotSupported) {
				log.Info("no pre-dump", "workload", pl.Key, "reason", err)
				continue
			}
			if err != nil {
				return nil, rollback("pre-dump", pl.Key, err)
			}
			opts.emit(Event{Phase: "predump", Workload: pl.Key})
		}
		phase("predump", start)
	}

	// Freeze all, close together.
	start := time.Now()
	{
		g, gctx := errgroup.WithContext(ctx)
		var failed struct {
			sync.Mutex
			key string
		}
		var mu sync.Mutex
		for i, pl := range p.Workloads {
			g.Go(func() error {
				if err := pl.backend.Freeze(gctx, pl.Workload); err != nil {
					failed.Lock()
					if failed.key == "" {
						failed.key = pl.Key
					}
					failed.Unlock()
					return err
				}
				mu.Lock()
				frozen[i], frozenAt[i] = true, time.Now()
				mu.Unlock()
				opts.emit(Event{Phase: "freeze", Workload: pl.Key})
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return nil, rollback("freeze", failed.key, err)
		}
		if err := ctx.Err(); err != nil {
			return nil, rollback("freeze", "", err)
		}
	}
	j.State = StateFrozen
	if err := j.Save(); err != nil {
		return nil, rollback("journal", "", err)
	}
	phase("freeze", start)

	// Dump in parallel, largest first, limited in bytes.
	start = time.Now()
	records := make([]memregion.WorkloadRecord, len(p.Workloads))
	res.Workloads = make([]WorkloadResult, len(p.Workloads))
	stopProgress := watchProgress(r, p.Bytes, opts)
	err = dumpAll(ctx, p, r, records, res.Workloads)
	stopProgress()
	if err != nil {
		var de *dumpError
		if errors.As(err, &de) {
			return nil, rollback("dump", de.key, de.err)
		}
		return nil, rollback("dump", "", err)
	}
	dumpTook := time.Since(start)
	phase("dump", start)

	// Seal: the commit point.
	start = time.Now()
	if err := ctx.Err(); err != nil {
		return nil, rollback("seal", "", err)
	}
	for i := range records {
		res.Bytes += res.Workloads[i].Bytes
	}
	res.GBps = float64(res.Bytes) / dumpTook.Seconds() / 1e9
	if res.Bytes > 0 {
		lr := lastRun{Time: time.Now(), Bytes: res.Bytes, DumpGBps: res.GBps, Concurrency: opts.Concurrency, DryRun: opts.DryRun}
		if err := saveLastRun(opts.Journal, lr); err != nil {
			log.Warn("recording the dump rate", "err", err)
		}
	}
	if opts.DryRun {
		now := time.Now()
		for i := range res.Workloads {
			res.Workloads[i].FrozenS = now.Sub(frozenAt[i]).Seconds()
		}
		var pe *PhaseError
		if err := rollback("dry run", "", errors.New("dry run")); errors.As(err, &pe) && pe.Rollback != nil {
			return res, pe.Rollback
		}
		phase("rollback", now)
		return res, nil
	}
	attrs := map[string]string{"concurrency": fmt.Sprint(opts.Concurrency), "dump_gbps": fmt.Sprintf("%.3f", res.GBps)}
	for k, v := range opts.Attributes {
		attrs[k] = v
	}
	m := &memregion.Manifest{Workloads: records, Attributes: attrs}
	if err := r.Seal(ctx, m); err != nil {
		return nil, rollback("seal", "", err)
	}
	sealedAt := time.Now()
	phase("seal", start)
	opts.emit(Event{Phase: "seal", Bytes: res.Bytes})
	j.State = StateCommitted
	if err := j.Save(); err != nil {
		log.Error("journal", "err", err)
	}
	for i := range res.Workloads {
		res.Workloads[i].FrozenS = sealedAt.Sub(frozenAt[i]).Seconds()
	}

	// End the originals; their only copy is now the region.
	start = time.Now()
	var finishErrs []error
	fctx := context.WithoutCancel(ctx)
	for i, pl := range p.Workloads {
		if err := pl.backend.Finish(fctx, pl.Workload); err != nil {
			finishErrs = append(finishErrs, fmt.Errorf("finish %s: %w", pl.Key, err))
			continue
		}
		res.Workloads[i].FinishOK = true
		opts.emit(Event{Phase: "finish", Workload: pl.Key})
	}
	phase("finish", start)
	opts.emit(Event{Phase: "done", Bytes: res.Bytes})
	if err := errors.Join(finishErrs...); err != nil {
		return res, fmt.Errorf("checkpoint committed, but some originals still exist (stop them before resume-all): %w", err)
	}
	return res, nil
}

// ProgressInterval is how often "progress" events report the dump.
const ProgressInterval = 500 * time.Millisecond

// watchProgress emits a "progress" event every ProgressInterval with the
// bytes written into the region since the dump began, until the returned
// stop is called: on a dir region the filesystem's growth (backends write
// files there directly), on a raw one the bytes streamed (space there is
// reserved ahead of the writes).
func watchProgress(r *memregion.Region, total int64, opts Options) (stop func()) {
	if opts.Events == nil {
		return func() {}
	}
	written := func() (int64, error) {
		_, free, err := r.Space()
		return -free, err
	}
	if r.Kind() == memregion.KindRaw {
		written = func() (int64, error) { return r.Streamed(), nil }
	}
	base, err := written()
	if err != nil {
		return func() {}
	}
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(ProgressInterval)
		defer t.Stop()
		start := time.Now()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if n, err := written(); err == nil {
					opts.emit(Event{Phase: "progress", Bytes: max(n-base, 0), Total: total, Elapsed: time.Since(start).Seconds()})
				}
			}
		}
	}()
	return func() { close(done); <-exited }
}

type dumpError struct {
	key string
	err error
}

func (e *dumpError) Error() string { return e.key + ": " + e.err.Error() }
func (e *dumpError) Unwrap() error { return e.err }

// dumpAll dumps every workload with at most Concurrency at once and a
// byte budget of the Concurrency largest workloads, in plan order
// (largest first). The first failure cancels the others.
func dumpAll(ctx context.Context, p *Plan, r *memregion.Region, records []memregion.WorkloadRecord, results []WorkloadResult) error {
	opts := p.Options
	var budget int64
	for i, pl := range p.Workloads {
		if i < opts.Concurrency {
			budget += max(pl.Bytes, 1)
		}
	}
	budget = max(budget, 1)
	sem := semaphore.NewWeighted(budget)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Concurrency)
	for i, pl := range p.Workloads {
		weight := min(max(pl.Bytes, 1), budget)
		if err := sem.Acquire(gctx, weight); err != nil {
			break // a dump failed or ctx is done; g.Wait reports it
		}
		g.Go(func() error {
			defer sem.Release(weight)
			start := time.Now()
			pre := ObjectPrefix(pl.Workload)
			recipe, err := pl.backend.Dump(gctx, pl.Workload, hypervisors.RegionSink{Region: r, Prefix: pre})
			if err != nil {
				return &dumpError{key: pl.Key, err: err}
			}
			var objs []string
			var n int64
			for _, o := range r.Objects() {
				if strings.HasPrefix(o.Name, pre+"/") {
					objs = append(objs, o.Name)
					n += o.Size
				}
			}
			w := pl.Workload
			records[i] = memregion.WorkloadRecord{ID: w.ID, Kind: w.Kind, Backend: w.Backend, MemoryBytes: w.MemoryBytes, Objects: objs, Restore: recipe}
			results[i] = WorkloadResult{Key: pl.Key, Bytes: n, DumpS: time.Since(start).Seconds()}
			opts.emit(Event{Phase: "dump", Workload: pl.Key, Bytes: n, Elapsed: time.Since(start).Seconds()})
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}
