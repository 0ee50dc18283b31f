package criu

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"github.com/ckpt-dev/ckpt/hypervisors"
)

// TestCancelledToolIsWaitedFor: a cancel does not abandon a CRIU call in
// flight; the call returns once the tool has ended, with its own result.
func TestCancelledToolIsWaitedFor(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "done")
	cmd := exec.Command("sh", "-c", "sleep 0.5; touch "+marker)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	err := runOwned(ctx, cmd, time.Minute, nil)
	if err != nil {
		t.Fatalf("runOwned = %v; want the tool's own success", err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatal("runOwned returned before the tool ended")
	}
}

// TestCancelledToolIsKilledAfterGrace: past the grace the whole process
// group goes (runc and the CRIU it started), and the call returns only
// then, with the cancel as its error.
func TestCancelledToolIsKilledAfterGrace(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child")
	cmd := exec.Command("sh", "-c", "sleep 60 & echo $! > "+pidFile+"; wait")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := runOwned(ctx, cmd, 300*time.Millisecond, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("runOwned = %v; want the deadline", err)
	}
	if took := time.Since(start); took < 500*time.Millisecond {
		t.Fatalf("killed after %s, before the grace", took)
	}
	waitKilled(t, pidFile, "the tool's child")
}

// TestRuntimeFailureIsNotGone: only a container runc has no state for is
// "not found"; a runc that fails (crashes, times out) on a container
// that has state says nothing about the container, and recover must not
// read it as gone.
func TestRuntimeFailureIsNotGone(t *testing.T) {
	root := t.TempDir()
	failing := filepath.Join(t.TempDir(), "runc")
	if err := os.WriteFile(failing, []byte("#!/bin/sh\necho 'runc crashed' >&2\nexit 2\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	r := &Runtime{cfg: Config{Runc: failing, RuncRoot: root, CRIU: "criu"}.withDefaults()}
	if err := os.MkdirAll(filepath.Join(root, "web"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "web", "state.json"), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := r.state(context.Background(), "web")
	if err == nil || errors.Is(err, hypervisors.ErrNotFound) {
		t.Fatalf("state of a container whose runc failed = %v; want an error that is not ErrNotFound", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.state(ctx, "gone"); errors.Is(err, hypervisors.ErrNotFound) {
		t.Fatalf("a cancelled query said %v", err)
	}
	if _, err := r.state(context.Background(), "gone"); !errors.Is(err, hypervisors.ErrNotFound) {
		t.Fatalf("state of a container without state = %v; want ErrNotFound", err)
	}
}

// TestCancelledSwrkIsKilledAfterGrace: a "criu swrk" that hangs (here a
// fake one that never answers, and a child of its own) is killed with its
// session once the grace is over, also for a restore, which names no pid
// a tracer could be found by; the call then returns with the cancel.
func TestCancelledSwrkIsKilledAfterGrace(t *testing.T) {
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Skip("no setsid(1): criu swrk runs without a session wrapper, and only tracers are killed")
	}
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child")
	fake := filepath.Join(dir, "criu")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nsleep 600 & echo $! >"+pidFile+"\nwait\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	w, err := sessionWrapper([]string{dir}, fake)
	if err != nil || w == fake {
		t.Fatalf("sessionWrapper = %q, %v", w, err)
	}
	r := &Runtime{cfg: Config{CancelGrace: 100 * time.Millisecond}, swrkPath: w}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err = r.swrk(ctx, rpc.CriuReqType_RESTORE, filepath.Join(dir, "img"), filepath.Join(dir, "work"), &rpc.CriuOpts{}, &notifyPID{}, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("swrk = %v; want the deadline", err)
	}
	waitKilled(t, pidFile, "the fake CRIU's child")
	if left, _ := filepath.Glob(filepath.Join(dir, "criu-call-*")); len(left) > 0 {
		t.Fatalf("call wrappers left behind: %v", left)
	}
}

// waitKilled waits for the process whose pid is in pidFile to be gone,
// and fails the test if it outlives the kill by seconds.
func waitKilled(t *testing.T, pidFile, what string) {
	t.Helper()
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	for deadline := time.Now().Add(5 * time.Second); syscall.Kill(pid, 0) == nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s %d outlived the kill", what, pid)
		}
	}
}
