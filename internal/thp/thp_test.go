package thp

import (
	"os"
	"path/filepath"
	"testing"
)

// fakeKnobs points the package at copies of the mode files. A plain file
// holds what was written; the kernel's would show it selected, which
// select mimics.
func fakeKnobs(t *testing.T) (set func(path, s string), got func(path string) string) {
	dir := t.TempDir()
	EnabledPath, DefragPath = filepath.Join(dir, "enabled"), filepath.Join(dir, "defrag")
	MarkerPath = filepath.Join(dir, "run", "ckpt", "thp-restore.json")
	set = func(path, s string) { os.WriteFile(path, []byte(s), 0o600) }
	got = func(path string) string { b, _ := os.ReadFile(path); return string(b) }
	return set, got
}

// AlwaysWhile: enabled madvise and defrag madvise go to always and back;
// always and never are left alone; a knob changed meanwhile keeps its new
// mode; a process killed before its undo is undone by the next PutBack.
func TestAlwaysWhile(t *testing.T) {
	set, got := fakeKnobs(t)
	selected := func(path string) { set(path, "["+got(path)+"]") } // as the kernel shows it

	set(EnabledPath, "always [madvise] never\n")
	set(DefragPath, "always defer defer+madvise [madvise] never\n")
	undo, did, err := AlwaysWhile()
	if err != nil || did == "" {
		t.Fatal(did, err)
	}
	if got(EnabledPath) != "always" || got(DefragPath) != "always" {
		t.Fatalf("wrote enabled %q, defrag %q; want always, always", got(EnabledPath), got(DefragPath))
	}
	selected(EnabledPath)
	selected(DefragPath)
	if err := undo(); err != nil {
		t.Fatal(err)
	}
	if got(EnabledPath) != "madvise" || got(DefragPath) != "madvise" {
		t.Fatalf("undo wrote enabled %q, defrag %q; want madvise, madvise", got(EnabledPath), got(DefragPath))
	}
	if _, err := os.Stat(MarkerPath); err == nil {
		t.Fatal("marker left after the undo")
	}

	// always and never are left alone.
	for _, m := range []string{"[always] madvise never", "always madvise [never]"} {
		set(EnabledPath, m)
		set(DefragPath, "always defer defer+madvise [madvise] never")
		undo, _, err := AlwaysWhile()
		if err != nil || undo() != nil {
			t.Fatal(err)
		}
		if got(EnabledPath) != m || got(DefragPath) != "always defer defer+madvise [madvise] never" {
			t.Fatalf("enabled %q: changed to %q, defrag %q", m, got(EnabledPath), got(DefragPath))
		}
	}

	// A knob the operator changed meanwhile stays as they set it.
	set(EnabledPath, "always [madvise] never")
	set(DefragPath, "always defer [defer+madvise] madvise never")
	undo, _, _ = AlwaysWhile()
	set(EnabledPath, "always madvise [never]")
	selected(DefragPath)
	undo()
	if got(EnabledPath) != "always madvise [never]" || got(DefragPath) != "defer+madvise" {
		t.Fatalf("after the undo: enabled %q, defrag %q", got(EnabledPath), got(DefragPath))
	}

	// Killed before its undo: the next PutBack undoes it.
	set(EnabledPath, "always [madvise] never")
	set(DefragPath, "always defer defer+madvise [madvise] never")
	if _, _, err := AlwaysWhile(); err != nil {
		t.Fatal(err)
	}
	selected(EnabledPath)
	selected(DefragPath)
	if err := PutBack(); err != nil {
		t.Fatal(err)
	}
	if got(EnabledPath) != "madvise" || got(DefragPath) != "madvise" {
		t.Fatalf("PutBack after a kill: enabled %q, defrag %q", got(EnabledPath), got(DefragPath))
	}
	set(EnabledPath, "[always] madvise never") // no marker: the operator's always stays
	if PutBack(); got(EnabledPath) != "[always] madvise never" {
		t.Fatalf("PutBack without a marker changed the mode: %s", got(EnabledPath))
	}

	set(EnabledPath, "garbage")
	if _, _, err := AlwaysWhile(); err == nil {
		t.Fatal("no error for a file without a selected mode")
	}
}
