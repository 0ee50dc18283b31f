// Package thp switches the kernel's transparent huge page mode from
// madvise to always for a while: a restore that faults every page of a
// workload's memory in takes a 2 MiB fault where it would take 512 of
// 4 KiB (see restore.Options.HugePages).
package thp

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// EnabledPath is the kernel's THP mode file.
var EnabledPath = "/sys/kernel/mm/transparent_hugepage/enabled"

// MarkerPath records, while AlwaysWhile's change holds, that madvise is to
// be put back. It lives in /run, as long as the mode itself: a process
// killed before its undo leaves it for PutBack (ckpt's next resume).
var MarkerPath = "/run/ckpt/thp-madvise"

// Mode is the selected mode in EnabledPath ("always", "madvise", "never").
func Mode() (string, error) {
	b, err := os.ReadFile(EnabledPath)
	if err != nil {
		return "", err
	}
	return selected(b)
}

func selected(b []byte) (string, error) {
	i, j := bytes.IndexByte(b, '['), bytes.IndexByte(b, ']')
	if i < 0 || j < i {
		return "", fmt.Errorf("%s: no selected mode in %q", EnabledPath, strings.TrimSpace(string(b)))
	}
	return string(b[i+1 : j]), nil
}

// AlwaysWhile switches madvise to always and returns what puts madvise
// back (if nobody changed the mode meanwhile). Any other mode is left as
// it is: always needs nothing, and never is the operator's choice. It
// says what it did, for the log.
func AlwaysWhile() (undo func() error, did string, err error) {
	mode, err := Mode()
	if err != nil {
		return func() error { return nil }, "", err
	}
	if mode != "madvise" {
		return func() error { return nil }, "transparent huge pages stay " + mode, nil
	}
	if err := os.MkdirAll(filepath.Dir(MarkerPath), 0o700); err != nil {
		return func() error { return nil }, "", err
	}
	if err := os.WriteFile(MarkerPath, []byte("madvise\n"), 0o600); err != nil {
		return func() error { return nil }, "", err
	}
	if err := os.WriteFile(EnabledPath, []byte("always"), 0); err != nil {
		os.Remove(MarkerPath)
		return func() error { return nil }, "", fmt.Errorf("transparent huge pages madvise → always: %w", err)
	}
	return PutBack, "transparent huge pages madvise → always while restoring", nil
}

// PutBack undoes an AlwaysWhile whose marker is there (this process's, or
// one killed before its undo): madvise again, unless someone changed the
// mode meanwhile (theirs now). Without a marker it does nothing.
func PutBack() error {
	if _, err := os.Stat(MarkerPath); err != nil {
		return nil
	}
	m, err := Mode()
	if err == nil && m == "always" {
		err = os.WriteFile(EnabledPath, []byte("madvise"), 0)
	}
	if err == nil {
		err = os.Remove(MarkerPath)
	}
	return err
}
