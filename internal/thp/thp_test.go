package thp

import (
	"os"
	"path/filepath"
	"testing"
)

// AlwaysWhile on a copy of the mode file: madvise goes to always and
// back; always and never are left alone; a mode changed meanwhile is not
// undone.
func TestAlwaysWhile(t *testing.T) {
	EnabledPath = filepath.Join(t.TempDir(), "enabled")
	MarkerPath = filepath.Join(t.TempDir(), "ckpt", "thp-madvise")
	set := func(s string) { os.WriteFile(EnabledPath, []byte(s), 0o600) }
	mode := func() string { m, _ := Mode(); return m }

	set("always [madvise] never\n")
	undo, did, err := AlwaysWhile()
	if err != nil || did == "" {
		t.Fatal(did, err)
	}
	// The kernel's file shows the selection; a plain file holds what was written.
	if b, _ := os.ReadFile(EnabledPath); string(b) != "always" {
		t.Fatalf("wrote %q, want always", b)
	}
	set("[always] madvise never\n")
	if err := undo(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(EnabledPath); string(b) != "madvise" {
		t.Fatalf("undo wrote %q, want madvise", b)
	}

	for _, m := range []string{"[always] madvise never", "always madvise [never]"} {
		set(m)
		undo, _, err := AlwaysWhile()
		if err != nil || undo() != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(EnabledPath); string(b) != m {
			t.Fatalf("mode %q changed to %q", m, b)
		}
	}

	set("always [madvise] never")
	undo, _, _ = AlwaysWhile()
	set("always madvise [never]") // the operator's, meanwhile
	undo()
	if mode() != "never" {
		t.Fatalf("undo overrode a mode set meanwhile: %s", mode())
	}
	// A process killed before its undo: the next PutBack undoes it.
	set("always [madvise] never")
	if _, _, err := AlwaysWhile(); err != nil {
		t.Fatal(err)
	}
	set("[always] madvise never")
	if err := PutBack(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(EnabledPath); string(b) != "madvise" {
		t.Fatalf("PutBack after a kill wrote %q, want madvise", b)
	}
	if _, err := os.Stat(MarkerPath); err == nil {
		t.Fatal("marker left after PutBack")
	}
	set("[always] madvise never") // no marker: the operator's always stays
	if PutBack(); mode() != "always" {
		t.Fatalf("PutBack without a marker changed the mode: %s", mode())
	}

	set("garbage")
	if _, _, err := AlwaysWhile(); err == nil {
		t.Fatal("no error for a file without a selected mode")
	}
}
