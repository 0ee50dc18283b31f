package criu

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
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
	w, err := sessionWrapper([]string{dir}, sh)
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
	if again, err := sessionWrapper([]string{dir}, sh); err != nil || again != w {
		t.Fatalf("second sessionWrapper = %q, %v; want %q", again, err, w)
	}
}

// Debian mounts /run noexec: the wrapper goes into the next directory
// that allows executables, and with none left criu runs unwrapped.
func TestSessionWrapperSkipsNoexec(t *testing.T) {
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Skip("setsid(1) is not installed; the wrapper falls back to criu itself")
	}
	if os.Geteuid() != 0 {
		t.Skip("mounting a noexec tmpfs needs root")
	}
	noexec := t.TempDir()
	if err := unix.Mount("ckpt-test", noexec, "tmpfs", unix.MS_NOEXEC, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(noexec, unix.MNT_DETACH) })
	next := t.TempDir()
	w, err := sessionWrapper([]string{noexec, next}, "/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(w) != next {
		t.Fatalf("wrapper at %s, want it in %s (the first dir is noexec)", w, next)
	}
	if err := exec.Command(w).Run(); err != nil {
		t.Fatalf("running the wrapper: %v", err)
	}
	if w, err := sessionWrapper([]string{noexec}, "/bin/true"); err != nil || w != "/bin/true" {
		t.Fatalf("with only a noexec dir: %q, %v; want criu itself", w, err)
	}
}
