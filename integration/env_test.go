package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// inCI reports whether the tests run under CI, where every tool must exist.
func inCI() bool { return os.Getenv("CI") != "" }

// missing fails the test in CI and skips it elsewhere, with the reason.
func missing(t *testing.T, format string, args ...any) {
	t.Helper()
	if inCI() {
		t.Fatalf("missing in CI (hack/setup.sh must install it): "+format, args...)
	}
	t.Skipf("skipped: "+format+"; run hack/setup.sh", args...)
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		missing(t, "needs root")
	}
}

func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		missing(t, "%s not found in PATH", name)
	}
	return p
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

func cacheDir() string {
	if d := os.Getenv("CKPT_CACHE"); d != "" {
		return d
	}
	return filepath.Join(repoRoot(), ".cache")
}

var (
	ckptOnce sync.Once
	ckptBin  string
	ckptErr  error
)

// ckptBinary builds a static ckpt once per test binary run.
func ckptBinary(t *testing.T) string {
	t.Helper()
	ckptOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ckpt-bin-")
		if err != nil {
			ckptErr = err
			return
		}
		ckptBin = filepath.Join(dir, "ckpt")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", ckptBin, "./cmd/ckpt")
		cmd.Dir = repoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			ckptErr = err
			t.Logf("go build: %s", out)
		}
	})
	if ckptErr != nil {
		t.Fatalf("building ckpt: %v", ckptErr)
	}
	return ckptBin
}
