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
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/ckpt-dev/ckpt/checkpoint"
	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/memregion"
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
	// Concurrency is how many workloads restore at once (default: CPUs).
	Concurrency int
	// Order lists workload keys ("backend/id"), kinds ("vm") or backends
	// ("qemu") to restore first, in waves, in this order; the rest follow.
	Order []string
	// Only restores just these workload keys (ckpt resume ID).
	Only []string
	// KeepRegion leaves the region committed even when all are back.
	KeepRegion bool
	// State and Journal default to DefaultState and
	// checkpoint.DefaultJournal.
	State, Journal string
	Logger         *slog.Logger
	Events         func(checkpoint.Event)
}

// Result says what happened to each workload.
type Result struct {
	RegionID string           `json:"region_id"`
	Restored []WorkloadResult `json:"restored"`
	Failed   []WorkloadResult `json:"failed,omitempty"`
	Skipped  []string         `json:"already_restored,omitempty"`
	Released bool             `json:"released"`
	Seconds  float64          `json:"seconds"`
}

// WorkloadResult is one workload's restore.
type WorkloadResult struct {
	Key     string  `json:"key"`
	Seconds float64 `json:"seconds"`
	Error   string  `json:"error,omitempty"`
}

// state is the progress of one checkpoint's resume, on disk.
type state struct {
	Checkpoint string   `json:"checkpoint"` // region id + creation time
	Restored   []string `json:"restored"`
	// Failed says why each workload that is not back failed last time.
	Failed map[string]string `json:"failed,omitempty"`
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
// failed (Result says which and why).
func ResumeAll(ctx context.Context, opts Options) (*Result, error) {
	if opts.Concurrency <= 0 {
		opts.Concurrency = runtime.NumCPU()
	}
	if opts.State == "" {
		opts.State = DefaultState
	}
	if opts.Journal == "" {
		opts.Journal = checkpoint.DefaultJournal
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	emit := func(e checkpoint.Event) {
		if opts.Events != nil {
			e.Time = time.Now()
			opts.Events(e)
		}
	}
	unlock, err := checkpoint.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	start := time.Now()
	r, err := memregion.Open(opts.Region, memregion.Options{Logger: log})
	if err != nil {
		return nil, err
	}
	defer r.Close()
	res := &Result{RegionID: r.ID()}
	m, verr := r.Verify(ctx)
	if m == nil {
		return nil, fmt.Errorf("region %s: %w (nothing was restored or deleted)", opts.Region, verr)
	}
	bad := map[string]string{} // object → why
	for _, e := range unwrapAll(verr) {
		var oe *memregion.ObjectError
		if errors.As(e, &oe) {
			bad[oe.Object] = oe.Reason
		} else if e != nil {
			return nil, fmt.Errorf("region %s: %w (nothing was restored or deleted)", opts.Region, verr)
		}
	}
	emit(checkpoint.Event{Phase: "verify", Bytes: m.TotalBytes()})

	id := r.ID() + "@" + m.Created.UTC().Format(time.RFC3339Nano)
	st := readState(opts.State)
	if st.Checkpoint != id {
		st = state{Checkpoint: id}
	}
	byName := map[string]hypervisors.Backend{}
	for _, b := range opts.Backends {
		byName[b.Name()] = b
	}
	only := map[string]bool{}
	for _, k := range opts.Only {
		only[k] = true
	}
	var todo []memregion.WorkloadRecord
	for _, rec := range m.Workloads {
		k := rec.Backend + "/" + rec.ID
		switch {
		case len(only) > 0 && !only[k]:
		case slices.Contains(st.Restored, k):
			res.Skipped = append(res.Skipped, k)
		default:
			todo = append(todo, rec)
		}
		delete(only, k)
	}
	for k := range only {
		return nil, fmt.Errorf("%s is not in the checkpoint", k)
	}

	var mu sync.Mutex
	done := func(k string, took time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		wr := WorkloadResult{Key: k, Seconds: took.Seconds()}
		if err != nil {
			wr.Error = err.Error()
			res.Failed = append(res.Failed, wr)
			if st.Failed == nil {
				st.Failed = map[string]string{}
			}
			st.Failed[k] = wr.Error
			if err := writeState(opts.State, st); err != nil {
				log.Error("recording the failure", "err", err)
			}
			log.Error("restore failed; its images are kept", "workload", k, "err", err)
			emit(checkpoint.Event{Phase: "restore", Workload: k, Error: err.Error()})
			return
		}
		res.Restored = append(res.Restored, wr)
		st.Restored = append(st.Restored, k)
		delete(st.Failed, k)
		if err := writeState(opts.State, st); err != nil {
			log.Error("recording the restore", "err", err)
		}
		emit(checkpoint.Event{Phase: "restore", Workload: k, Elapsed: took.Seconds()})
	}
	for _, wave := range waves(todo, opts.Order) {
		g := errgroup.Group{}
		g.SetLimit(opts.Concurrency)
		for _, rec := range wave {
			g.Go(func() error {
				k := rec.Backend + "/" + rec.ID
				t0 := time.Now()
				for _, o := range rec.Objects {
					if why, ok := bad[o]; ok {
						done(k, 0, fmt.Errorf("object %s: %s", o, why))
						return nil
					}
				}
				b := byName[rec.Backend]
				if b == nil {
					done(k, 0, fmt.Errorf("backend %s is not available on this host", rec.Backend))
					return nil
				}
				w := hypervisors.Workload{ID: rec.ID, Kind: rec.Kind, Backend: rec.Backend, MemoryBytes: rec.MemoryBytes}
				src := hypervisors.RegionSource{Region: r, Manifest: m, Prefix: recordPrefix(rec, w)}
				err := b.Restore(ctx, w, rec.Restore, src)
				done(k, time.Since(t0), err)
				return nil
			})
		}
		g.Wait()
	}
	res.Seconds = time.Since(start).Seconds()
	if len(res.Failed) > 0 {
		return res, fmt.Errorf("%w: %d of %d failed, their images are kept; run resume-all again to retry", ErrPartial, len(res.Failed), len(todo))
	}
	if len(st.Restored) == len(m.Workloads) && !opts.KeepRegion {
		if err := r.Release(); err != nil {
			return res, fmt.Errorf("every workload is back, but releasing the region failed: %w", err)
		}
		res.Released = true
		os.Remove(opts.State)
		if j, _ := checkpoint.ReadJournal(opts.Journal); j != nil && j.State == checkpoint.StateCommitted {
			j.Remove()
		}
		emit(checkpoint.Event{Phase: "release"})
	}
	return res, nil
}

// waves splits records by the Order list: one wave per entry, then the
// rest.
func waves(recs []memregion.WorkloadRecord, order []string) [][]memregion.WorkloadRecord {
	var out [][]memregion.WorkloadRecord
	left := recs
	for _, o := range order {
		var wave, rest []memregion.WorkloadRecord
		for _, r := range left {
			if o == r.Backend+"/"+r.ID || o == r.Kind || o == r.Backend {
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
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
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
