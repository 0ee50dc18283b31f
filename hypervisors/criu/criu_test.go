package criu_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/hypervisors/conformance"
	"github.com/ckpt-dev/ckpt/hypervisors/criu"
	"github.com/ckpt-dev/ckpt/internal/testenv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// testMemMiB is the pseudo-random anonymous memory each test container
// holds; its checksum is compared after every resume.
const testMemMiB = 256

var seq atomic.Int64

func newBackend(t *testing.T, root string) *criu.Runtime {
	t.Helper()
	b, _ := newBackendLogs(t, root)
	return b
}

func newBackendTB(t testing.TB, root string) *criu.Runtime {
	t.Helper()
	b, _ := newBackendLogs(t, root)
	return b
}

// newBackendLogs also returns the directory restored containers log to.
func newBackendLogs(t testing.TB, root string) (*criu.Runtime, string) {
	t.Helper()
	return newBackendLogsCfg(t, root, nil)
}

func newBackendLogsCfg(t testing.TB, root string, edit func(*criu.Config)) (*criu.Runtime, string) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "iptables-restore")
	cfg := criu.Config{
		Runc:     testenv.RequireTool(t, "runc"),
		CRIU:     testenv.RequireTool(t, "criu"),
		RuncRoot: root,
		WorkDir:  filepath.Join(t.TempDir(), "work"),
		LogDir:   filepath.Join(t.TempDir(), "logs"),
	}
	if edit != nil {
		edit(&cfg)
	}
	b, err := criu.New(context.Background(), cfg, nil)
	if errors.Is(err, hypervisors.ErrSkipBackend) {
		testenv.Missing(t, "criu backend declined: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b, cfg.LogDir
}

// bundle makes an OCI bundle with busybox and testload, sharing the host's
// network namespace so the test reaches testload's port.
func bundle(t testing.TB, env []string, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp"} {
		os.MkdirAll(filepath.Join(rootfs, d), 0o755)
	}
	cp := func(src, dst string) {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(rootfs, dst), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cp("/bin/busybox", "bin/busybox")
	cp(testenv.StaticBinary(t, "./internal/testload"), "bin/testload")
	for _, a := range []string{"sh", "sleep"} {
		os.Symlink("busybox", filepath.Join(rootfs, "bin", a))
	}
	runc := testenv.RequireTool(t, "runc")
	if out, err := exec.Command(runc, "spec", "--bundle", dir).CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v: %s", err, out)
	}
	var spec specs.Spec
	b, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	spec.Process.Terminal = false
	spec.Process.Args = args
	spec.Process.Env = append(spec.Process.Env, env...)
	spec.Root.Readonly = false
	var nss []specs.LinuxNamespace
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type != specs.NetworkNamespace {
			nss = append(nss, ns)
		}
	}
	spec.Linux.Namespaces = nss
	b, _ = json.MarshalIndent(&spec, "", " ")
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// container runs testload in a runc container with its stdio on pipes.
type container struct {
	id, root, addr string
	ticks          atomic.Int64 // last "tick N" read from its stdout pipe
}

// checkpointable is the environment of a Go workload CRIU can dump: Go
// >= 1.24 listens with MPTCP by default, and CRIU cannot dump MPTCP
// sockets ("Unsupported proto 262").
var checkpointable = []string{"GODEBUG=multipathtcp=0"}

func startContainer(t *testing.T, root string, env []string) *container {
	t.Helper()
	return startContainerTB(t, root, env, testMemMiB)
}

func startContainerTB(t testing.TB, root string, env []string, memMiB int) *container {
	t.Helper()
	port := freePort(t)
	c := &container{id: fmt.Sprintf("ckpt-test-%d-%d", os.Getpid(), seq.Add(1)), root: root, addr: fmt.Sprintf("127.0.0.1:%d", port)}
	dir := bundle(t, env, "/bin/testload", "-mem", strconv.Itoa(memMiB), "-listen", c.addr)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(testenv.RequireTool(t, "runc"), "--root", root, "run", "--detach", "--bundle", dir, c.id)
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Run(); err != nil {
		t.Fatalf("runc run: %v", err)
	}
	pw.Close()
	go c.drain(pr)
	t.Cleanup(func() {
		exec.Command(testenv.RequireTool(t, "runc"), "--root", root, "delete", "--force", c.id).Run()
	})
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := c.ask("tick"); err == nil {
			return c
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("container %s did not answer on %s", c.id, c.addr)
	return nil
}

// drain keeps reading the container's stdout pipe, as a shim would, and
// remembers the last tick.
func (c *container) drain(f *os.File) {
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if n, ok := parseTick(sc.Text()); ok {
			c.ticks.Store(n)
		}
	}
}

func parseTick(line string) (int64, bool) {
	v, ok := strings.CutPrefix(strings.TrimSpace(line), "tick ")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil
}

// ask sends one command on a fresh connection and returns the answer.
func (c *container) ask(cmd string) (string, error) {
	conn, err := net.DialTimeout("tcp", c.addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintln(conn, cmd); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line), err
}

// probe implements conformance.Probe. The counter comes from the
// container's stdout: the pipe before a suspend, the log file the backend
// connects to it after a restore. (Connecting to a frozen container would
// leave an in-flight connection in its accept queue, which CRIU refuses.)
type probe struct {
	c      *container
	logDir string
	tree   bool // a plain process tree: no runtime to ask
}

func (p *probe) Counter(t *testing.T) int64 {
	t.Helper()
	n := p.c.ticks.Load()
	if b, err := os.ReadFile(filepath.Join(p.logDir, p.c.id+".log")); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := parseTick(l); ok && v > n {
				n = v
			}
		}
	}
	return n
}

func (p *probe) Intact(t *testing.T) {
	t.Helper()
	if sum, err := p.c.ask("sum"); err != nil || !strings.HasPrefix(sum, "sum OK") {
		t.Fatalf("memory: %q, %v", sum, err)
	}
	if ch, err := p.c.ask("child"); err != nil || !strings.HasSuffix(ch, "alive") {
		t.Fatalf("child: %q, %v", ch, err)
	}
	if p.tree {
		return
	}
	out, err := exec.Command(testenv.RequireTool(t, "runc"), "--root", p.c.root, "list").CombinedOutput()
	if err != nil || !strings.Contains(string(out), p.c.id) || !strings.Contains(string(out), "running") {
		t.Fatalf("runc list does not show %s running: %v\n%s", p.c.id, err, out)
	}
	// runc manages it: a harmless signal goes through runc kill.
	if out, err := exec.Command(testenv.RequireTool(t, "runc"), "--root", p.c.root, "kill", p.c.id, "CONT").CombinedOutput(); err != nil {
		t.Fatalf("runc kill %s CONT: %v\n%s", p.c.id, err, out)
	}
}

func TestConformance(t *testing.T) {
	root := filepath.Join(t.TempDir(), "runc")
	b, logs := newBackendLogs(t, root)
	conformance.Run(t, conformance.Harness{
		Backend: b,
		Start: func(t *testing.T) (string, conformance.Probe) {
			c := startContainer(t, root, checkpointable)
			return c.id, &probe{c: c, logDir: logs}
		},
	})
}

// TestFailedDumpLeavesContainerRunning dumps a container CRIU cannot
// handle (an MPTCP listener): the error is a *CRIUError carrying CRIU's
// reason, and after the rollback's Thaw the container runs on intact.
func TestFailedDumpLeavesContainerRunning(t *testing.T) {
	root := filepath.Join(t.TempDir(), "runc")
	b := newBackend(t, root)
	c := startContainer(t, root, nil)
	ctx := context.Background()
	ws, err := b.Discover(ctx)
	if err != nil || len(ws) != 1 {
		t.Fatalf("Discover: %v, %v", ws, err)
	}
	w := ws[0]
	if err := b.Freeze(ctx, w); err != nil {
		t.Fatal(err)
	}
	p := &probe{c: c, logDir: t.TempDir()}
	frozenAt := p.Counter(t)
	_, err = b.Dump(ctx, w, discardSink{})
	var ce *criu.CRIUError
	if !errors.As(err, &ce) || !strings.Contains(ce.Log, "Unsupported proto 262") {
		t.Fatalf("Dump = %v; want a CRIUError naming the MPTCP socket", err)
	}
	if err := b.Thaw(ctx, w); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for p.Counter(t) <= frozenAt && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if p.Counter(t) <= frozenAt {
		t.Fatal("container does not run after a failed dump and thaw")
	}
	p.Intact(t)
}

// TestPreflightRefusesHostFileStdout: CRIU cannot restore a host file as
// stdio ("Can't lookup mount"); preflight says so before anything freezes.
func TestPreflightRefusesHostFileStdout(t *testing.T) {
	root := filepath.Join(t.TempDir(), "runc")
	b := newBackend(t, root)
	id := fmt.Sprintf("ckpt-test-%d-%d", os.Getpid(), seq.Add(1))
	dir := bundle(t, nil, "/bin/sh", "-c", "while :; do echo x; sleep 1; done")
	out, err := os.Create(filepath.Join(t.TempDir(), "stdout.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(testenv.RequireTool(t, "runc"), "--root", root, "run", "--detach", "--bundle", dir, id)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		t.Fatalf("runc run: %v", err)
	}
	t.Cleanup(func() { exec.Command(testenv.RequireTool(t, "runc"), "--root", root, "delete", "--force", id).Run() })
	err = b.Preflight(context.Background(), hypervisors.Workload{ID: id})
	if !errors.Is(err, hypervisors.ErrNotCheckpointable) || !strings.Contains(err.Error(), out.Name()) {
		t.Fatalf("Preflight = %v; want ErrNotCheckpointable naming %s", err, out.Name())
	}
}

type discardSink struct{}

func (discardSink) Create(string, int64) (io.WriteCloser, error) { return nopWriteCloser{}, nil }

type nopWriteCloser struct{}

func (nopWriteCloser) Write(p []byte) (int, error) { return len(p), nil }
func (nopWriteCloser) Close() error                { return nil }
