package checkpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
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

// Recover thaws every workload a crashed suspend left frozen (a journal
// before the commit point) and removes the journal. A committed journal
// is left for resume-all. It returns what it thawed.
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
	if err != nil || j == nil {
		return nil, err
	}
	if j.State == StateCommitted {
		return nil, nil
	}
	if j.BootID != bootID() {
		// Frozen processes do not survive a reboot: nothing to thaw.
		return nil, j.Remove()
	}
	byName := map[string]hypervisors.Backend{}
	for _, b := range backends {
		byName[b.Name()] = b
	}
	var thawed []string
	var errs []error
	for _, w := range j.Workloads {
		b := byName[w.Backend]
		if b == nil {
			errs = append(errs, fmt.Errorf("%s: backend %s is not loaded", Key(w), w.Backend))
			continue
		}
		err := b.Thaw(ctx, w)
		if errors.Is(err, hypervisors.ErrNotFound) {
			log.Warn("recover: workload is gone", "workload", Key(w), "err", err)
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("thaw %s: %w", Key(w), err))
			continue
		}
		log.Info("recover: thawed", "workload", Key(w))
		thawed = append(thawed, Key(w))
	}
	if err := errors.Join(errs...); err != nil {
		return thawed, err
	}
	return thawed, j.Remove()
}

// RecoverIfNeeded runs Recover when a crashed run left a journal; the
// caller holds the lock.
func RecoverIfNeeded(ctx context.Context, path string, backends []hypervisors.Backend, log *slog.Logger) error {
	j, err := ReadJournal(path)
	if err != nil || j == nil || j.State == StateCommitted {
		return err
	}
	if log != nil {
		log.Warn("a previous suspend did not finish; thawing what it froze", "pid", j.PID, "state", j.State)
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
