package checkpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/ckpt-dev/ckpt/fleetlock"
	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/journal"
	"github.com/ckpt-dev/ckpt/memregion"
	"github.com/ckpt-dev/ckpt/restore"
)

// RecoverOptions configure a recover. Zero values mean defaults.
type RecoverOptions struct {
	Journal     string // default DefaultJournal
	ResumeState string // the resume's record (default restore.DefaultState)
	Backends    []hypervisors.Backend
	Logger      *slog.Logger
}

// Recover undoes what a crashed suspend left, so that every workload runs
// again on this boot:
//   - before the commit point (the region holds no sealed checkpoint):
//     every freeze it issued is thawed, a workload whose dump ended it is
//     brought back from its images (hypervisors.Reviver), and the
//     region's uncommitted objects are dropped;
//   - after it, on the same boot (no kexec happened): the originals still
//     frozen are thawed and the ones already ended are restored from the
//     region, which is then released (restore.ResumeHeld);
//   - a committed checkpoint from an earlier boot is resume-all's.
//
// The journal is removed only when all of that succeeded. It runs on ctx
// without its cancel, bounded by DefaultCleanupTimeout, and returns what
// runs again.
func Recover(ctx context.Context, path string, backends []hypervisors.Backend, log *slog.Logger) ([]string, error) {
	return RecoverWith(ctx, RecoverOptions{Journal: path, Backends: backends, Logger: log})
}

// RecoverWith is Recover with all its options.
func RecoverWith(ctx context.Context, o RecoverOptions) ([]string, error) {
	unlock, err := Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	return recoverLocked(ctx, o)
}

// recoverLocked is Recover for a caller holding the lock: whoever wrote
// the journal is not running any more.
func recoverLocked(ctx context.Context, o RecoverOptions) ([]string, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Journal == "" {
		o.Journal = DefaultJournal
	}
	j, err := journal.Read(o.Journal)
	if err != nil || j == nil {
		return nil, err
	}
	ctx, cancel := detached(ctx, DefaultCleanupTimeout)
	defer cancel()
	sameBoot := j.BootID == journal.BootID()
	r, rerr := memregion.Open(j.Region, memregion.Options{Logger: o.Logger})
	if rerr == nil {
		defer r.Close()
		if sealed, _ := r.Sealed(); sealed && j.State != StateCommitted {
			// Killed between the seal and its journal entry: the seal
			// is the commit point.
			j.State = StateCommitted
			if err := j.Save(); err != nil {
				return nil, err
			}
		}
	}
	if j.State == StateCommitted {
		if !sameBoot || rerr != nil {
			return nil, rerr // resume-all's, after the kexec
		}
		return resumeCommitted(ctx, o, j)
	}
	back, err := undoFreezes(ctx, o, j, sameBoot)
	if err != nil {
		return back, err
	}
	if rerr == nil {
		// The objects of the killed suspend, not this process's: DiscardAll.
		if err := r.DiscardAll(); err != nil {
			return back, fmt.Errorf("dropping the region's uncommitted objects: %w", err)
		}
	}
	if err := j.Remove(); err != nil {
		return back, err
	}
	// The killed suspend's reboot slot: nothing is suspended any more.
	if err := fleetlock.Give(ctx, fleetlock.Record(o.Journal)); err != nil {
		o.Logger.Warn("the reboot slot is still held", "err", err)
	}
	return back, nil
}

// resumeCommitted brings back, on the boot that made it, every workload
// of a committed checkpoint whose suspend was cut short.
func resumeCommitted(ctx context.Context, o RecoverOptions, j *Journal) ([]string, error) {
	o.Logger.Warn("a suspend was cut short after its commit; bringing its workloads back on this boot", "pid", j.PID)
	res, err := restore.ResumeHeld(ctx, restore.Options{Region: j.Region, Backends: o.Backends, Journal: o.Journal,
		State: o.ResumeState, Logger: o.Logger})
	var back []string
	if res != nil {
		for _, w := range res.Restored {
			back = append(back, w.Key)
		}
		back = append(back, res.Skipped...)
	}
	return back, err
}

// undoFreezes thaws (or revives) every workload whose freeze the journal
// says may have been issued.
func undoFreezes(ctx context.Context, o RecoverOptions, j *Journal, sameBoot bool) ([]string, error) {
	byName := map[string]hypervisors.Backend{}
	for _, b := range o.Backends {
		byName[b.Name()] = b
	}
	var back []string
	var errs []error
	for _, w := range j.Workloads {
		k := Key(w)
		// Frozen processes do not survive a reboot; a workload its dump
		// ended may, in images on disk.
		rescue, rescued := j.Rescues[k]
		if !rescued && (!sameBoot || !j.MayHaveFrozen(k)) {
			continue
		}
		b := byName[w.Backend]
		if b == nil {
			errs = append(errs, fmt.Errorf("%s: backend %s is not loaded", k, w.Backend))
			continue
		}
		err := undoFreeze(ctx, b, w, rescue)
		if errors.Is(err, hypervisors.ErrNotFound) && !rescued {
			o.Logger.Warn("recover: workload is gone", "workload", k, "err", err)
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("recover %s: %w", k, err))
			continue
		}
		o.Logger.Info("recover: running again", "workload", k)
		back = append(back, k)
	}
	return back, errors.Join(errs...)
}

// undoFreeze thaws w, or revives it from its rescue record.
func undoFreeze(ctx context.Context, b hypervisors.Backend, w hypervisors.Workload, rescue json.RawMessage) error {
	if rv, ok := b.(hypervisors.Reviver); ok && rescue != nil {
		return rv.Revive(ctx, w, rescue)
	}
	return b.Thaw(ctx, w)
}

// RecoverIfNeeded runs Recover when a crashed run left a journal; the
// caller holds the lock.
func RecoverIfNeeded(ctx context.Context, path string, backends []hypervisors.Backend, log *slog.Logger) error {
	j, err := journal.Read(path)
	if err != nil || j == nil || j.State == StateCommitted {
		return err
	}
	if log != nil {
		log.Warn("a previous suspend did not finish; undoing what it froze", "pid", j.PID, "state", j.State)
	}
	_, err = recoverLocked(ctx, RecoverOptions{Journal: path, Backends: backends, Logger: log})
	return err
}
