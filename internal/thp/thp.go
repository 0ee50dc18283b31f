// Package thp switches the kernel's transparent huge page mode from
// madvise to always for a while: a restore that faults every page of a
// workload's memory in takes a 2 MiB fault where it would take 512 of
// 4 KiB (see restore.Options.HugePages).
package thp

import (
	"bytes"
	"fmt"
	"os"
	"strings"
)

// EnabledPath is the kernel's THP mode file.
var EnabledPath = "/sys/kernel/mm/transparent_hugepage/enabled"

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
	if err := os.WriteFile(EnabledPath, []byte("always"), 0); err != nil {
		return func() error { return nil }, "", fmt.Errorf("transparent huge pages madvise → always: %w", err)
	}
	return func() error {
		if m, err := Mode(); err != nil || m != "always" {
			return err // changed by someone else: theirs now
		}
		return os.WriteFile(EnabledPath, []byte("madvise"), 0)
	}, "transparent huge pages madvise → always while restoring", nil
}
