package checkpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/journal"
)

// Recover undoes what a crashed suspend left (a journal before the commit
// point): every freeze it issued is thawed, and a workload whose dump
// ended it is brought back from its images (hypervisors.Reviver). The
// journal is removed only when all of that succeeded; a committed one is
// left for resume-all. It runs on ctx without its cancel, bounded by
// DefaultCleanupTimeout, and returns what it brought back.
func Recover(ctx context.Context, path string, backends []hypervisors.Backend, log *slog.Logger) ([]string, error) {
	unlock, err := Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	return recoverLocked(ctx, path, backends, log)
}

// recoverLocked is Recover for a caller holding the lock: whoever wrote
// the journal is not running any more.
func recoverLocked(ctx context.Context, path string, backends []hypervisors.Backend, log *slog.Logger) ([]string, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	j, err := journal.Read(path)
	if err != nil || j == nil || j.State == StateCommitted {
		return nil, err
	}
	ctx, cancel := detached(ctx, DefaultCleanupTimeout)
	defer cancel()
	byName := map[string]hypervisors.Backend{}
	for _, b := range backends {
		byName[b.Name()] = b
	}
	// Frozen processes do not survive a reboot; a workload its dump
	// ended may, in images on disk.
	sameBoot := j.BootID == journal.BootID()
	var back []string
	var errs []error
	for _, w := range j.Workloads {
		k := Key(w)
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
			log.Warn("recover: workload is gone", "workload", k, "err", err)
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("recover %s: %w", k, err))
			continue
		}
		log.Info("recover: running again", "workload", k)
		back = append(back, k)
	}
	if err := errors.Join(errs...); err != nil {
		return back, err
	}
	return back, j.Remove()
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
	_, err = recoverLocked(ctx, path, backends, log)
	return err
}
