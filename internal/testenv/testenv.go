// Package testenv holds what ckpt's tests share about their environment:
// root, tools that hack/setup.sh installs, the repository and its cache,
// and binaries built once per test process.
//
// Outside CI a test whose tool is missing skips and says which; with
// CI=true it fails, so a missing install step cannot hide behind a skip.
package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/memregion"
)

// InCI reports whether the tests run under CI, where every tool must exist.
func InCI() bool { return os.Getenv("CI") != "" }

// Missing fails the test in CI and skips it elsewhere, with the reason.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("missing in CI (hack/setup.sh must install it): "+format, args...)
	}
	t.Skipf("skipped: "+format+"; run hack/setup.sh", args...)
}

// RequireRoot needs uid 0.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Getuid() != 0 {
		Missing(t, "needs root")
	}
}

// RequireTool returns the path of a tool in PATH (/usr/local/sbin first,
// where setup puts the criu wrapper).
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	for _, dir := range []string{"/usr/local/sbin", "/usr/local/bin"} {
		if p := filepath.Join(dir, name); isExec(p) {
			return p
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, "%s not found in PATH", name)
	}
	return p
}

func isExec(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// RepoRoot is the repository's top directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(filepath.Dir(file)))
}

// CacheDir is where hack/setup.sh caches downloads and unpacks kernels.
func CacheDir() string {
	if d := os.Getenv("CKPT_CACHE"); d != "" {
		return d
	}
	return filepath.Join(RepoRoot(), ".cache")
}

var (
	buildMu sync.Mutex
	built   = map[string]string{}
)

// StaticBinary builds the package pkg (relative to the repository, e.g.
// "./cmd/ckpt") once per test process, statically, and returns its path.
func StaticBinary(t testing.TB, pkg string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[pkg]; ok {
		return p
	}
	// A test binary run where there is no Go toolchain (inside a QEMU
	// guest) finds the binaries built for it in CKPT_TESTBIN_DIR.
	if d := os.Getenv("CKPT_TESTBIN_DIR"); d != "" {
		p := filepath.Join(d, filepath.Base(pkg))
		if !isExec(p) {
			t.Fatalf("CKPT_TESTBIN_DIR=%s has no %s", d, filepath.Base(pkg))
		}
		built[pkg] = p
		return p
	}
	dir, err := os.MkdirTemp("", "ckpt-bin-")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	built[pkg] = out
	return out
}

// MemcpyTime times a copy of n bytes between pre-touched buffers: the
// baseline benchmarks report their throughput against, measured in the
// same run.
func MemcpyTime(n int64) time.Duration {
	src, dst := make([]byte, n), make([]byte, n)
	for i := range src {
		src[i], dst[i] = byte(i), byte(i)
	}
	start := time.Now()
	copy(dst, src)
	return time.Since(start)
}

// Region formats and opens a region of kind in a fresh directory below
// base ("" for the test's temp dir, "/dev/shm" for tmpfs); size matters
// for raw regions. It is closed and removed at the end of the test.
func Region(t testing.TB, base, kind string, size int64) *memregion.Region {
	t.Helper()
	r, _ := TempRegion(t, base, kind, size)
	return r
}

// TempRegion is Region with drop, which closes and removes it at once
// (again at the end of the test is harmless).
func TempRegion(t testing.TB, base, kind string, size int64) (*memregion.Region, func()) {
	t.Helper()
	d, err := os.MkdirTemp(base, "ckpt-region-")
	if base == "" {
		d, err = t.TempDir(), nil
	}
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(d, "region")
	if err := memregion.Format(path, memregion.FormatOptions{Kind: kind, Size: size}); err != nil {
		t.Fatal(err)
	}
	r, err := memregion.Open(path, memregion.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	drop := func() { once.Do(func() { r.Close(); os.RemoveAll(d) }) }
	t.Cleanup(drop)
	return r, drop
}

// SocketDir is a short temporary directory for unix sockets (whose paths
// t.TempDir() makes too long), removed at cleanup.
func SocketDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "cks")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}
