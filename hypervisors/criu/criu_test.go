package criu_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/hypervisors/conformance"
	"github.com/ckpt-dev/ckpt/hypervisors/criu"
	"github.com/ckpt-dev/ckpt/internal/testenv"
	"github.com/ckpt-dev/ckpt/internal/workloads"
)

// testMemMiB is the pseudo-random anonymous memory each test container
// holds; its checksum is compared after every resume.
const testMemMiB = 256

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

// probe implements conformance.Probe. The counter comes from the
// container's stdout: the pipe before a suspend, the log file the backend
// connects to it after a restore. (Connecting to a frozen container would
// leave an in-flight connection in its accept queue, which CRIU refuses.)
type probe struct {
	c      *workloads.Container
	logDir string
	tree   bool // a plain process tree: no runtime to ask
}

func (p *probe) Counter(t *testing.T) int64 {
	t.Helper()
	n := p.c.Ticks.Load()
	if b, err := os.ReadFile(filepath.Join(p.logDir, p.c.ID+".log")); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := workloads.ParseTick(l); ok && v > n {
				n = v
			}
		}
	}
	return n
}

func (p *probe) Intact(t *testing.T) {
	t.Helper()
	if sum, err := p.c.Ask("sum"); err != nil || !strings.HasPrefix(sum, "sum OK") {
		t.Fatalf("memory: %q, %v", sum, err)
	}
	if ch, err := p.c.Ask("child"); err != nil || !strings.HasSuffix(ch, "alive") {
		t.Fatalf("child: %q, %v", ch, err)
	}
	if p.tree {
		return
	}
	out, err := exec.Command(testenv.RequireTool(t, "runc"), "--root", p.c.Root, "list").CombinedOutput()
	if err != nil || !strings.Contains(string(out), p.c.ID) || !strings.Contains(string(out), "running") {
		t.Fatalf("runc list does not show %s running: %v\n%s", p.c.ID, err, out)
	}
	// runc manages it: a harmless signal goes through runc kill.
	if out, err := exec.Command(testenv.RequireTool(t, "runc"), "--root", p.c.Root, "kill", p.c.ID, "CONT").CombinedOutput(); err != nil {
		t.Fatalf("runc kill %s CONT: %v\n%s", p.c.ID, err, out)
	}
}

func TestConformance(t *testing.T) {
	root := filepath.Join(t.TempDir(), "runc")
	b, logs := newBackendLogs(t, root)
	conformance.Run(t, conformance.Harness{
		Backend: b,
		Start: func(t *testing.T) (string, conformance.Probe) {
			c := workloads.StartContainer(t, root, workloads.Checkpointable, testMemMiB)
			return c.ID, &probe{c: c, logDir: logs}
		},
	})
}

// TestFailedDumpLeavesContainerRunning dumps a container CRIU cannot
// handle (an MPTCP listener): the error is a *CRIUError carrying CRIU's
// reason, and after the rollback's Thaw the container runs on intact.
func TestFailedDumpLeavesContainerRunning(t *testing.T) {
	root := filepath.Join(t.TempDir(), "runc")
	b := newBackend(t, root)
	c := workloads.StartContainer(t, root, nil, testMemMiB)
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
	id := fmt.Sprintf("ckpt-test-%d-%d", os.Getpid(), workloads.Seq.Add(1))
	dir := workloads.Bundle(t, nil, "/bin/sh", "-c", "while :; do echo x; sleep 1; done")
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
