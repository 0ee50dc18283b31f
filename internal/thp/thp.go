// Package thp switches the kernel's transparent huge pages from madvise to
// always for a while: a restore that faults every page of a workload's
// memory in takes a 2 MiB fault where it would take 512 of 4 KiB (see
// restore.Options.HugePages). CRIU applies a VMA's MADV_HUGEPAGE only
// after it has filled it, so in madvise mode every fault of its fill is a
// 4 KiB one; and with defrag in madvise mode a fault in a VMA without
// MADV_HUGEPAGE takes a huge page only when one is free, never compacting
// for it. Both knobs go to always for the restore and back after.
package thp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// EnabledPath and DefragPath are the kernel's THP mode files.
var (
	EnabledPath = "/sys/kernel/mm/transparent_hugepage/enabled"
	DefragPath  = "/sys/kernel/mm/transparent_hugepage/defrag"
)

// MarkerPath records, while AlwaysWhile's change holds, what each knob is
// to be put back to. It lives in /run, as long as the modes themselves: a
// process killed before its undo leaves it for PutBack (ckpt's next
// resume).
var MarkerPath = "/run/ckpt/thp-restore.json"

// Mode is the selected mode in EnabledPath ("always", "madvise", "never").
func Mode() (string, error) { return modeOf(EnabledPath) }

func modeOf(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	i, j := bytes.IndexByte(b, '['), bytes.IndexByte(b, ']')
	if i < 0 || j < i {
		return "", fmt.Errorf("%s: no selected mode in %q", path, strings.TrimSpace(string(b)))
	}
	return string(b[i+1 : j]), nil
}

// AlwaysWhile switches enabled from madvise to always, and defrag (from
// whatever it is but never) to always with it, and returns what puts them
// back (a knob someone changed meanwhile is theirs and stays). enabled in
// always needs nothing; never is the operator's choice and is left, as
// defrag is then. It says what it did, for the log.
func AlwaysWhile() (undo func() error, did string, err error) {
	nothing := func() error { return nil }
	mode, err := Mode()
	if err != nil {
		return nothing, "", err
	}
	if mode != "madvise" {
		return nothing, "transparent huge pages stay " + mode, nil
	}
	back := map[string]string{EnabledPath: "madvise"}
	did = "transparent huge pages madvise → always"
	if d, err := modeOf(DefragPath); err == nil && d != "always" && d != "never" {
		back[DefragPath] = d
		did += ", defrag " + d + " → always"
	}
	b, _ := json.Marshal(back)
	if err := os.MkdirAll(filepath.Dir(MarkerPath), 0o700); err != nil {
		return nothing, "", err
	}
	if err := os.WriteFile(MarkerPath, b, 0o600); err != nil {
		return nothing, "", err
	}
	for path := range back {
		if err := os.WriteFile(path, []byte("always"), 0); err != nil {
			PutBack()
			return nothing, "", fmt.Errorf("%s: always: %w", path, err)
		}
	}
	return PutBack, did + " while restoring", nil
}

// PutBack undoes an AlwaysWhile whose marker is there (this process's, or
// one killed before its undo): each knob still in always gets its old
// mode back. Without a marker it does nothing.
func PutBack() error {
	b, err := os.ReadFile(MarkerPath)
	if err != nil {
		return nil
	}
	var back map[string]string
	if err := json.Unmarshal(b, &back); err != nil {
		return fmt.Errorf("%s: %w", MarkerPath, err)
	}
	for path, old := range back {
		if m, err := modeOf(path); err != nil {
			return err
		} else if m == "always" {
			if err := os.WriteFile(path, []byte(old), 0); err != nil {
				return fmt.Errorf("%s: %s: %w", path, old, err)
			}
		}
	}
	return os.Remove(MarkerPath)
}
