package criu

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ckpt-dev/ckpt/internal/freezer"
)

// DefaultCancelGrace is how long a cancelled CRIU call (Config.CancelGrace)
// is given to end on its own before it is killed.
const DefaultCancelGrace = 2 * time.Minute

// A CRIU that is killed while it holds a tree seized can leave the tasks
// with its parasite inside, and one left running past a rollback's thaw
// writes back the freezer state it found (FROZEN) when it ends. So a
// cancelled ctx does not kill CRIU: the call waits until CRIU ends on its
// own, for at most the grace; only then is it killed, and waited for.

// runOwned runs cmd in a session (and so a process group) of its own.
// The session matters for CRIU: a tree dumped as a shell job is restored
// into CRIU's session, and the caller's may have its leader outside this
// pid namespace (a service or CI runner entered with unshare/nsenter), where
// the tree's next dump would find session 0 and fail. When ctx ends first,
// it waits for cmd for up to grace, then kills the whole group (runc and
// the CRIU it started) and every CRIU still tracing one of pids(). It
// returns only once cmd has exited: with cmd's own result when cmd ended
// by itself (a dump that completed after the cancel did happen), else
// with ctx's error.
func runOwned(ctx context.Context, cmd *exec.Cmd, grace time.Duration, pids func() []int) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setsid = true
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	kill := func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		killTracers(pids)
	}
	return awaitOwned(ctx, done, grace, kill)
}

// awaitOwned waits for done; when ctx ends first it waits for up to
// grace more, then calls kill and waits for done again.
func awaitOwned(ctx context.Context, done <-chan error, grace time.Duration, kill func()) error {
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case err := <-done:
		return err // it ended by itself: its result is the truth
	case <-t.C:
	}
	kill()
	<-done
	if grace == 0 {
		return fmt.Errorf("%w (killed)", ctx.Err())
	}
	return fmt.Errorf("%w (still running %s after the cancel: killed)", ctx.Err(), grace)
}

// killTracers kills every CRIU that traces one of pids.
func killTracers(pids func() []int) {
	if pids == nil {
		return
	}
	for _, p := range pids() {
		if t := freezer.TracerOf(p); t > 0 && freezer.IsCRIU(t) {
			syscall.Kill(t, syscall.SIGKILL)
		}
	}
}

// callWrapper returns a one-call wrapper around the session wrapper at
// swrk: it records the pid of the "criu swrk" that go-criu starts through
// it (the wrapper execs setsid, which execs criu: one pid, the leader of
// its own session), so that a cancelled call can kill that CRIU. pid says
// 0 until CRIU has started, and always without a session wrapper (swrk is
// criu itself). cleanup removes the files.
func callWrapper(swrk string) (path string, pid func() int, cleanup func(), err error) {
	none := func() int { return 0 }
	if !strings.HasPrefix(filepath.Base(swrk), "criu-swrk-") {
		return swrk, none, func() {}, nil
	}
	f, err := os.CreateTemp(filepath.Dir(swrk), "criu-call-")
	if err != nil {
		return "", nil, nil, fmt.Errorf("criu call wrapper: %w", err)
	}
	pidPath := f.Name() + ".pid"
	script := "#!/bin/sh\n# written by ckpt for one CRIU call: its pid, then criu swrk\necho $$ >" +
		shQuote(pidPath) + "\nexec " + shQuote(swrk) + " \"$@\"\n"
	_, err = f.WriteString(script)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o700)
	}
	cleanup = func() { os.Remove(f.Name()); os.Remove(pidPath) }
	if err != nil {
		cleanup()
		return "", nil, nil, fmt.Errorf("criu call wrapper: %w", err)
	}
	pid = func() int {
		b, err := os.ReadFile(pidPath)
		if err != nil {
			return 0
		}
		n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return n
	}
	return f.Name(), pid, cleanup, nil
}

func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
