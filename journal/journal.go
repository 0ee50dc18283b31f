package journal

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/internal/atomicfile"
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
		j.PID, j.Started, j.BootID = os.Getpid(), time.Now(), BootID()
	}
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(j.Path, b, 0o600)
}

// Remove deletes the journal (after a rollback or a resume).
func (j *Journal) Remove() error {
	err := os.Remove(j.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// Read reads the journal at path; (nil, nil) if there is none.
func Read(path string) (*Journal, error) {
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

// MayHaveFrozen says whether the journal's run may have issued a freeze of key.
// A journal without the list (a crash in the pre-dump, or an older ckpt)
// counts as all: a thaw of a running workload is harmless, a frozen one
// left so is not.
func (j *Journal) MayHaveFrozen(key string) bool {
	return j.Freezes == nil || slices.Contains(j.Freezes, key)
}

// BootID is this boot's id (/proc/sys/kernel/random/boot_id).
func BootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return string(b)
}

// LockPath serialises ckpt runs; CKPT_LOCK overrides it, for separate ckpt
// instances on one machine (the fleet lock's simulated hosts).
var LockPath = func() string {
	if p := os.Getenv("CKPT_LOCK"); p != "" {
		return p
	}
	return "/run/lock/ckpt.lock"
}()

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

// CommittedRegion is the region of the committed checkpoint that the
// journal at path records ("" when it records none, or there is no
// journal): the boot units resume that one, whatever region they were
// configured with (a soft-reboot update's is in /run, a kexec-less one's
// on disk). A journal that cannot be read is an error, never "none".
func CommittedRegion(path string) (string, error) {
	j, err := Read(path)
	if err != nil || j == nil || j.State != StateCommitted {
		return "", err
	}
	return j.Region, nil
}
