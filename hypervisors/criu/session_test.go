package criu

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The wrapper go-criu runs as "criu" puts criu (here a shell standing in
// for it) in a session of its own, and passes every argument through.
func TestSessionWrapperRunsInOwnSession(t *testing.T) {
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Skip("setsid(1) is not installed; the wrapper falls back to criu itself")
	}
	dir := filepath.Join(t.TempDir(), "it's here") // a quote in the path
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	w, err := sessionWrapper(dir, sh)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(w, "-c", `echo "$$ $(cut -d' ' -f6 /proc/$$/stat) $1"`, "sh", "two words").Output()
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out))
	if len(f) != 4 || f[0] != f[1] || f[2]+" "+f[3] != "two words" {
		t.Fatalf("wrapper ran %q: want its own pid as session and the argument intact", out)
	}
	if again, err := sessionWrapper(dir, sh); err != nil || again != w {
		t.Fatalf("second sessionWrapper = %q, %v; want %q", again, err, w)
	}
}
