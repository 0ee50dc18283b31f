package checkpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"golang.org/x/sys/unix"
)

// DefaultJournal is on disk: it must outlive ckpt, and /run is wiped by
// kexec and soft-reboot.
const DefaultJournal = "/var/lib/ckpt/journal.json"

// Journal states.
const (
	StateFreezing  = "freezing"  // workloads may be frozen
	StateFrozen    = "frozen"    // all frozen, dumping
	StateCommitted = "committed" // the region holds them; resume-all's turn
)

// Journal records which workloads a suspend froze, so that a crashed run
// can be undone.
type Journal struct {
	Path      string                 `json:"-"`
	PID       int                    `json:"pid"`
	BootID    string                 `json:"boot_id"`
	Started   time.Time              `json:"started"`
	Region    string                 `json:"region"`
	State     string                 `json:"state"`
	Workloads []hypervisors.Workload `json:"workloads"`
	// Freezes are the workloads (keys) whose freeze was issued, recorded
	// before it was: recover undoes each of them.
	Freezes []string `json:"freezes,omitempty"`
	// Rescues are what a backend recorded before a dump that ends its
	// workload (hypervisors.Rescuer), by key: recover hands them to the
	// backend's Revive.
	Rescues map[string]json.RawMessage `json:"rescues,omitempty"`
}

// Save writes the journal atomically and durably.
func (j *Journal) Save() error {
	if j.PID == 0 {
		j.PID, j.Started, j.BootID = os.Getpid(), time.Now(), bootID()
	}
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(j.Path), 0o700); err != nil {
		return err
	}
	tmp := j.Path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp, j.Path)
}

// Remove deletes the journal (after a rollback or a resume).
func (j *Journal) Remove() error {
	err := os.Remove(j.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// ReadJournal reads the journal at path; (nil, nil) if there is none.
func ReadJournal(path string) (*Journal, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	j := &Journal{Path: path}
	if err := json.Unmarshal(b, j); err != nil {
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	return j, nil
}

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
	j, err := ReadJournal(path)
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
	sameBoot := j.BootID == bootID()
	var back []string
	var errs []error
	for _, w := range j.Workloads {
		k := Key(w)
		rescue, rescued := j.Rescues[k]
		if !rescued && (!sameBoot || !j.froze(k)) {
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

// froze says whether the journal's run may have issued a freeze of key.
// A journal without the list (a crash in the pre-dump, or an older ckpt)
// counts as all: a thaw of a running workload is harmless, a frozen one
// left so is not.
func (j *Journal) froze(key string) bool {
	return j.Freezes == nil || slices.Contains(j.Freezes, key)
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
	j, err := ReadJournal(path)
	if err != nil || j == nil || j.State == StateCommitted {
		return err
	}
	if log != nil {
		log.Warn("a previous suspend did not finish; undoing what it froze", "pid", j.PID, "state", j.State)
	}
	_, err = recoverLocked(ctx, path, backends, log)
	return err
}

func bootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return string(b)
}

// LockPath serialises ckpt runs.
var LockPath = "/run/lock/ckpt.lock"

// Lock takes the host-wide ckpt lock, or says who holds it.
func Lock() (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(LockPath), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(LockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b, _ := os.ReadFile(LockPath)
		f.Close()
		return nil, fmt.Errorf("another ckpt is running (pid %s): %w", string(b), err)
	}
	f.Truncate(0)
	fmt.Fprintf(f, "%d", os.Getpid())
	return func() { f.Truncate(0); f.Close() }, nil
}
