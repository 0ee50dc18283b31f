package memregion

import (
	"errors"
	"fmt"
)

// Sentinel errors. Callers test for them with errors.Is; every error this
// package returns that belongs to one of these classes wraps it.
var (
	// ErrNoSpace means the region cannot hold the requested bytes.
	ErrNoSpace = errors.New("region: not enough space")
	// ErrNotFormatted means the path holds no ckpt region.
	ErrNotFormatted = errors.New("region: not a ckpt region")
	// ErrNotSealed means the region holds no committed checkpoint
	// (no manifest, or the manifest was never completed).
	ErrNotSealed = errors.New("region: no committed checkpoint")
	// ErrSealed means the region already holds a committed checkpoint; it
	// must be released (after a successful restore) before it is reused.
	ErrSealed = errors.New("region: holds a committed checkpoint")
	// ErrVersion means the region was written by an incompatible format.
	ErrVersion = errors.New("region: unsupported format version")
	// ErrCorrupt means region metadata or an object failed verification.
	ErrCorrupt = errors.New("region: corrupt")
	// ErrBusy means an operation conflicts with writers still open.
	ErrBusy = errors.New("region: objects still being written")
	// ErrObjectExists means an object of that name was already created.
	ErrObjectExists = errors.New("region: object exists")
	// ErrNoObject means the manifest names no such object.
	ErrNoObject = errors.New("region: no such object")
	// ErrNoPlan means no range of the requested size fits the memory map.
	ErrNoPlan = errors.New("region: no suitable memory range")
	// ErrUnsafe means an entry of the region is one ckpt refuses to
	// follow or open: a symlink, a path leaving the region, a FIFO, socket
	// or device node where a file or directory belongs, a raw region that
	// is neither a regular file nor a block device, or a region owned by
	// another user. Nothing outside the region was read or written.
	ErrUnsafe = errors.New("region: unsafe entry")
	// ErrReadOnly means the region was opened read-only (Options.ReadOnly)
	// and the call would change it.
	ErrReadOnly = errors.New("region: opened read-only")
	// ErrMayHoldCheckpoint means Format found ckpt data (a marker,
	// superblock or manifest, readable or not) and refuses without force.
	ErrMayHoldCheckpoint = errors.New("region: path may hold a checkpoint")
)

// UnsafeError names the entry of a region that was refused and why. It
// wraps ErrUnsafe.
type UnsafeError struct {
	Path   string // the entry, relative to the region for a dir region
	Reason string // e.g. "is a symlink", "is a FIFO"
}

func (e *UnsafeError) Error() string {
	return fmt.Sprintf("%v: %q %s", ErrUnsafe, e.Path, e.Reason)
}

func (e *UnsafeError) Unwrap() error { return ErrUnsafe }

// ObjectError says which object failed and why. It wraps a sentinel
// (ErrCorrupt for checksum, size and location failures).
type ObjectError struct {
	Object string // object name
	Reason string // human-readable reason, e.g. "checksum mismatch"
	Err    error  // wrapped cause
}

func (e *ObjectError) Error() string {
	return fmt.Sprintf("object %q: %s", e.Object, e.Reason)
}

func (e *ObjectError) Unwrap() error { return e.Err }
