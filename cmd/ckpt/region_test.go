package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/memregion"
	"github.com/ckpt-dev/ckpt/memregion/memregiontest"
)

// sealRegion makes a dir region holding one object and the manifest m.
func sealRegion(t *testing.T, object string, m *memregion.Manifest) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "r")
	if err := memregion.Format(path, memregion.FormatOptions{Kind: memregion.KindDir}); err != nil {
		t.Fatal(err)
	}
	r, err := memregion.Open(path, memregion.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w, err := r.Create(object, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("x"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Seal(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestRegionInspectCorruptExitsNonZero(t *testing.T) {
	path := sealRegion(t, "a", &memregion.Manifest{})
	f, _ := os.OpenFile(filepath.Join(path, "MANIFEST"), os.O_RDWR, 0)
	f.WriteAt([]byte{0xff}, 40)
	f.Close()
	for _, args := range [][]string{{"region", "inspect", path}, {"--json", "region", "inspect", path}} {
		out, err := run(t, args...)
		if !errors.Is(err, memregion.ErrCorrupt) {
			t.Errorf("ckpt %v = %v; want an error (exit 1) wrapping ErrCorrupt\n%s", args, err, out)
		}
		if !strings.Contains(out, "UNREADABLE") && !strings.Contains(out, `"error"`) {
			t.Errorf("ckpt %v does not report the damage:\n%s", args, out)
		}
	}
}

func TestRegionOutputEscapesControlCharacters(t *testing.T) {
	evil := "\x1b]0;owned\x07\x1b[2J\r\nstate: empty\u202e"
	m := &memregion.Manifest{Kernel: "k" + evil, BootID: "b" + evil,
		Workloads: []memregion.WorkloadRecord{{ID: "w" + evil, Backend: "x" + evil, Kind: "y" + evil, Objects: []string{"o" + evil}}}}
	path := sealRegion(t, "o"+evil, m)
	out, err := run(t, "region", "inspect", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"\x1b", "\x07", "\r", "\u202e", "\nstate: empty"} {
		if strings.Contains(out, bad) {
			t.Errorf("human output contains %q:\n%s", bad, out)
		}
	}
	if !strings.Contains(out, `\x1b]0;owned\a`) {
		t.Errorf("human output lacks the escaped name:\n%s", out)
	}
	out, err = run(t, "--json", "region", "inspect", path)
	if err != nil {
		t.Fatal(err)
	}
	var info regionInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatal(err)
	}
	if info.Manifest.Kernel != "k"+evil || info.Manifest.Objects[0].Name != "o"+evil || info.Manifest.Workloads[0].ID != "w"+evil {
		t.Fatalf("--json is not exact: %+v", info.Manifest)
	}
	// Error text is escaped too, and keeps its sentinel.
	os.Remove(filepath.Join(path, "objects", "o"+evil))
	_, err = run(t, "region", "verify", path)
	if !errors.Is(err, memregion.ErrCorrupt) || strings.ContainsAny(err.Error(), "\x1b\x07\r") {
		t.Fatalf("verify error = %q", err)
	}
}

// TestRegionVerbsOnHostileRegions runs every region verb of the CLI over
// every hostile region: nothing outside is read, written or deleted,
// nothing hangs or panics, inspect and verify fail, and format without
// --force refuses what may hold a checkpoint.
func TestRegionVerbsOnHostileRegions(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("building device nodes in regions needs root")
	}
	k, err := memregiontest.Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	verbs := [][]string{
		{"region", "inspect"}, {"--json", "region", "inspect"}, {"region", "verify"}, {"--json", "region", "verify"},
		{"region", "selftest", "check"},
		// The engine verbs that read a region, with a journal, resume
		// state, metrics and config of their own: the boot unit's
		// resume-all first (nothing committed: nothing to do), then
		// resume-all.
		{"status", "--region", "{}"},
		{"--json", "status", "--region", "{}"},
		{"resume-all", "--if-committed", "--region", "{}"},
		{"resume-all", "--region", "{}"},
		{"region", "format"}, {"region", "selftest", "write", "--objects", "1", "--size", "1K"},
		{"region", "release"}, {"region", "format", "--force"},
	}
	private := t.TempDir()
	for _, h := range k.Regions {
		t.Run(h.Class, func(t *testing.T) {
			for _, v := range verbs {
				args := withRegion(v, h.Path)
				if slices.Contains(v, "status") || v[0] == "resume-all" {
					args = append(args, "--journal", filepath.Join(private, "journal.json"), "--resume-state", filepath.Join(private, "resumed.json"),
						"--metrics-dir", private, "--config-dir", private)
				}
				var out string
				err := memregiontest.Guard(10*time.Second, func() error {
					var err error
					out, err = run(t, args...)
					return err
				})
				var ge *memregiontest.GuardError
				if errors.As(err, &ge) {
					t.Fatalf("ckpt %v: %v", v, err)
				}
				verb := strings.Join(v, " ")
				switch {
				case strings.HasPrefix(verb, "resume-all --region") && err == nil && !h.Empty && !h.ObjectsOnly,
					strings.HasSuffix(verb, "inspect") && err == nil && !h.Empty && !h.ObjectsOnly,
					strings.HasSuffix(verb, "verify") && err == nil,
					verb == "region format" && err == nil && !h.Empty:
					t.Errorf("ckpt %v succeeded on a hostile region:\n%s", v, out)
				}
			}
		})
	}
	if err := k.CheckDecoys(); err != nil {
		t.Fatalf("outside the regions:\n%v", err)
	}
}

// withRegion puts path where v says "{}", or after v.
func withRegion(v []string, path string) []string {
	var args []string
	found := false
	for _, a := range v {
		if a == "{}" {
			a, found = path, true
		}
		args = append(args, a)
	}
	if !found {
		args = append(args, path)
	}
	return args
}
