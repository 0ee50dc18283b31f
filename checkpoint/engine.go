package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/ckpt-dev/ckpt/checkpoint/kexec"
	"github.com/ckpt-dev/ckpt/fleetlock"
	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/internal/memwatch"
	"github.com/ckpt-dev/ckpt/journal"
	"github.com/ckpt-dev/ckpt/memregion"
)

// Options configure a suspend. Zero values mean defaults.
type Options struct {
	// Region is the region's path (a pmem device, a file, a directory); it
	// must be formatted.
	Region string
	// Backends are the loaded backends (hypervisors.Load).
	Backends []hypervisors.Backend
	// Skipped are the backends that declined to load, with why
	// (hypervisors.Load's skipped); the plan reports them.
	Skipped map[string]error
	// Concurrency is how many workloads dump at once (default: one per
	// CPU this process may use, GOMAXPROCS). A CRIU dump keeps about one
	// CPU busy and moves pages at a small fraction of the memory
	// bandwidth (hypervisors/criu BenchmarkParallelDump: one dump at a
	// time 0.86 CPUs busy, two at once 1.59 on two CPUs, 1.58× faster,
	// 2.1 GB/s against 11 GB/s memcpy), so CPUs, not memory bandwidth,
	// bound how many run at once; every workload stays frozen until the
	// commit, so finishing them all sooner shortens every blackout.
	Concurrency int
	// Headroom is extra space the region must have beyond the workloads'
	// memory (default 10 % + 64 MiB: images carry metadata).
	Headroom int64
	// GrowRegion, when set, is called by the plan when the region lacks
	// room, with the bytes it must hold (workloads and headroom); the plan
	// then checks again. ckpt update's soft-reboot path raises /run's
	// size cap there.
	GrowRegion func(need int64) error
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
	// FleetLock, when set, is where the host takes a reboot slot before
	// anything is frozen (waiting while the group's slots are taken). A
	// suspend that rolls back gives it back; a committed one keeps it
	// until every workload has resumed (restore.ResumeAll). It is
	// recorded next to the journal (fleetlock.Record) meanwhile.
	FleetLock *fleetlock.Config
	// Kexec is the kernel the caller will kexec into after the suspend
	// (nil: none, the caller reboots or soft-reboots); the plan checks it.
	Kexec *kexec.Image
	// CleanupTimeout bounds each step that must not be cut short by the
	// caller's ctx and runs on a detached one: rollback, finish, recover
	// (default DefaultCleanupTimeout).
	CleanupTimeout time.Duration
	// Logger receives the engine's logs (default: discard).
	Logger *slog.Logger
	// Events receives progress events (may be nil). It is called from
	// several goroutines.
	Events func(Event)
}

func (o Options) withDefaults() Options {
	if o.Concurrency <= 0 {
		o.Concurrency = runtime.GOMAXPROCS(0)
	}
	if o.Journal == "" {
		o.Journal = DefaultJournal
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.CleanupTimeout <= 0 {
		o.CleanupTimeout = DefaultCleanupTimeout
	}
	return o
}

func (o Options) emit(e Event) { journal.Emit(o.Events, e) }

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
	// StagingBytes is the RAM outside the region the suspend needs (state
	// staged where the region takes no files in place, hypervisors.Stager);
	// MemAvailable is what the host has (/proc/meminfo).
	StagingBytes int64 `json:"staging_bytes,omitempty"`
	MemAvailable int64 `json:"mem_available,omitempty"`
	// ActiveBackends are the backends that looked for workloads;
	// SkippedBackends those that could not run here, and why.
	ActiveBackends  []string          `json:"active_backends"`
	SkippedBackends map[string]string `json:"skipped_backends,omitempty"`
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
	p.Problems = append(p.Problems, claimedTwice(p.Workloads)...)
	for _, b := range opts.Backends {
		p.ActiveBackends = append(p.ActiveBackends, b.Name())
	}
	for name, why := range opts.Skipped {
		if p.SkippedBackends == nil {
			p.SkippedBackends = map[string]string{}
		}
		p.SkippedBackends[name] = why.Error()
	}
	// Largest first: the dump scheduler's order.
	sort.SliceStable(p.Workloads, func(i, j int) bool { return p.Workloads[i].Bytes > p.Workloads[j].Bytes })
	p.Warnings = HostWarnings(p.ActiveBackends)
	r, err := memregion.Open(opts.Region, memregion.Options{Logger: opts.Logger})
	if err != nil {
		p.Problems = append(p.Problems, fmt.Sprintf("region %s: %v", opts.Region, err))
	} else {
		defer r.Close()
		p.RegionTotal, p.RegionFree, _ = r.Space()
		if sealed, err := r.Sealed(); err != nil || sealed {
			p.Problems = append(p.Problems, fmt.Sprintf("region %s holds a committed checkpoint: resume it (ckpt resume-all) or release it first", opts.Region))
		} else if err := p.fits(r); err != nil {
			p.Problems = append(p.Problems, fmt.Sprintf("region %s: %v (workloads %s + headroom %s)", opts.Region, err,
				memregion.HumanBytes(p.Bytes), memregion.HumanBytes(p.headroom())))
		}
		p.checkStaging(r)
	}
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

// checkStaging adds up the RAM the backends stage outside the region and
// refuses a plan that would not fit in the host's available memory, with
// a reserve of a tenth for everything else.
// A region whose files take RAM on their way (an fs region without DAX)
// is only warned about: the page cache is written back and reclaimed.
func (p *Plan) checkStaging(r *memregion.Region) {
	if err := r.InPlace(); errors.Is(err, memregion.ErrNoDAX) {
		p.Warnings = append(p.Warnings, fmt.Sprintf("region %s: %v: the state goes through the page cache on its way to the device", r.Path(), err))
	}
	for _, pl := range p.Workloads {
		if st, ok := pl.backend.(hypervisors.Stager); ok {
			p.StagingBytes += st.StagingBytes(pl.Workload, pl.Bytes, r.DirectFiles())
		}
	}
	if p.StagingBytes == 0 {
		return
	}
	hint := "a directory region, or the fs layout on a block device (ckpt region format " + r.Path() + " --kind fs: DAX on pmem)"
	p.Warnings = append(p.Warnings, fmt.Sprintf("region %s takes no files in place: the backends stage %s in RAM outside it and copy it in; %s writes in place",
		r.Path(), memregion.HumanBytes(p.StagingBytes), hint))
	p.MemAvailable = memwatch.Available()
	if p.MemAvailable > 0 && p.StagingBytes > p.MemAvailable*9/10 {
		p.Problems = append(p.Problems, fmt.Sprintf("the backends stage %s in RAM outside region %s, but only %s of memory is available: use %s, or suspend fewer workloads at once (--only)",
			memregion.HumanBytes(p.StagingBytes), r.Path(), memregion.HumanBytes(p.MemAvailable), hint))
	}
}

// claimedTwice finds processes two backends both claim (a manager's
// container also seen as a bare runc one through a shared runc root):
// suspending one would leave the other's view wrong.
func claimedTwice(ws []Planned) []string {
	by := map[int]string{}
	var out []string
	for _, pl := range ws {
		if pl.Workload.PID <= 0 {
			continue
		}
		if other, dup := by[pl.Workload.PID]; dup && !strings.HasPrefix(other, pl.Workload.Backend+"/") {
			out = append(out, fmt.Sprintf("%s and %s are the same process (pid %d): exactly one backend must claim a workload", other, pl.Key, pl.Workload.PID))
			continue
		}
		by[pl.Workload.PID] = pl.Key
	}
	return out
}

// fits checks that the region has room for the workloads and the
// headroom, after Options.GrowRegion made some where it is set.
func (p *Plan) fits(r *memregion.Region) error {
	need := p.Bytes + p.headroom()
	err := r.Fits(need)
	if err == nil || p.Options.GrowRegion == nil {
		return err
	}
	if gerr := p.Options.GrowRegion(need); gerr != nil {
		return fmt.Errorf("%w; making room failed: %w", err, gerr)
	}
	p.RegionTotal, p.RegionFree, _ = r.Space()
	return r.Fits(need)
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
	GBps        float64            `json:"dump_gbps"`
	Phases      map[string]float64 `json:"phases_s"`
	// PeakExtraRAM is the most memory the dump took beyond the region
	// (MemAvailable's drop from before the dump, less what the region
	// itself grew where it is RAM, a tmpfs): staging, tools' buffers,
	// page cache. Sampled every memwatch.Interval.
	PeakExtraRAM int64 `json:"peak_extra_ram"`
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

// ObjectPrefix is a workload's directory of objects in the region:
// "backend/id" with every byte outside [A-Za-z0-9.-] (and a leading
// dot) written as _XX, so that two workloads never share a prefix ("web
// 1" is web_201, "web_1" is web_5f1). The suspend records it in the
// manifest, where restore reads it.
func ObjectPrefix(w hypervisors.Workload) string {
	return escapeName(w.Backend) + "/" + escapeName(w.ID)
}

func escapeName(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		plain := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' && i > 0
		if plain {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "_%02x", c)
		}
	}
	if b.Len() == 0 {
		return "_"
	}
	return b.String()
}

// ProgressInterval is how often "progress" events report the dump.
const ProgressInterval = 500 * time.Millisecond

// watchProgress emits a "progress" event every ProgressInterval with the
// bytes written into the region since the dump began (Region.Written),
// until the returned stop is called.
func watchProgress(r *memregion.Region, total int64, opts Options) (stop func()) {
	if opts.Events == nil {
		return func() {}
	}
	written := r.Written
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
