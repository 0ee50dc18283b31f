package integration

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/checkpoint"
	"github.com/ckpt-dev/ckpt/internal/workloads"
	"github.com/ckpt-dev/ckpt/journal"
)

// suspendPoints are where TestKilledAnywhereIsRecovered kills ckpt
// suspend-all: over plan, freeze, dump, seal and finish (see the
// journal.Failpoint calls in checkpoint).
var suspendPoints = []string{
	"plan", "journal", "freeze:start", "freeze:one", "freeze:done",
	"dump:rescue", "dump:one", "dump:done", "seal:before", "seal:done",
	"finish:one", "finish:done",
}

// TestKilledAnywhereIsRecovered: ckpt suspend-all is killed with SIGKILL
// at each of suspendPoints, with three containers (one holding an
// established TCP connection, so that its dump ends it), a VM, a libvirt
// domain, a Docker container, a podman pod and a containerd container
// (whose dumps end them too). After
// each, ckpt recover brings every workload back on this boot: all run,
// none is frozen, the connection still talks, nothing is committed and
// no journal is left. Then a whole suspend-all and resume-all work, and a
// resume-all killed after its first restore, run again, brings back the
// rest and restores nothing twice.
func TestKilledAnywhereIsRecovered(t *testing.T) {
	h := newHost(t)
	talker := h.container(workloads.Checkpointable)
	h.container(workloads.Checkpointable)
	h.container(workloads.Checkpointable)
	h.vm()
	// A libvirt domain and a Docker container: both end with their dump,
	// so a kill after it leaves them only in their rescue records.
	h.domain()
	h.docker("--restart", "always")
	// A podman pod: its checkpoints end its containers one by one.
	h.pod(1)
	// A containerd container: its checkpoint ends and deletes its task.
	h.containerd()
	conn := dialLine(t, talker.Addr)
	for _, point := range suspendPoints {
		t.Run(point, func(t *testing.T) {
			h.t = t
			before := h.counters()
			out, err := h.runEnv([]string{journal.FailpointEnv + "=" + point}, "suspend-all", "--no-kexec")
			if !killed(err) {
				t.Fatalf("suspend-all with %s=%s: %v (want SIGKILL)\n%s", journal.FailpointEnv, point, err, out)
			}
			if out, err := h.run("recover"); err != nil {
				t.Fatalf("recover after a kill at %s: %v\n%s", point, err, out)
			}
			h.running(before)
			conn.talk(t, point)
			h.notCommitted()
			if j, _ := checkpoint.ReadJournal(h.journal); j != nil {
				t.Fatalf("journal left after recover: %+v", j)
			}
		})
	}
	h.t = t
	before := h.counters()
	if out, err := h.run("suspend-all", "--no-kexec"); err != nil {
		t.Fatalf("suspend-all after the kills: %v\n%s", err, out)
	}
	out, err := h.runEnv([]string{journal.FailpointEnv + "=restore:one"}, "resume-all")
	if !killed(err) {
		t.Fatalf("resume-all with restore:one: %v (want SIGKILL)\n%s", err, out)
	}
	out, err = h.run("resume-all")
	if err != nil || !strings.Contains(out, "already resumed 1") || !strings.Contains(out, "resumed 7") {
		t.Fatalf("second resume-all = %v; want the 7 others restored and the first skipped", err)
	}
	h.running(before)
	conn.talk(t, "resume-all")
}

// killed says whether a command ended by SIGKILL.
func killed(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// runEnv is run with more environment.
func (h *host) runEnv(env []string, args ...string) (string, error) {
	h.t.Helper()
	cmd := h.command(args...)
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	h.t.Logf("ckpt %s (%s):\n%s", args[0], strings.Join(env, " "), out)
	return string(out), err
}

// lineConn is an established TCP connection to a container's testload.
type lineConn struct {
	c  net.Conn
	rd *bufio.Reader
	n  int
}

func dialLine(t *testing.T, addr string) *lineConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	l := &lineConn{c: c, rd: bufio.NewReader(c)}
	l.talk(t, "start")
	return l
}

// talk sends a line and expects it back, on the same connection.
func (l *lineConn) talk(t *testing.T, what string) {
	t.Helper()
	l.n++
	msg := fmt.Sprintf("echo %s-%d", strings.ReplaceAll(what, " ", "_"), l.n)
	l.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintln(l.c, msg); err != nil {
		t.Fatalf("the container's TCP connection is broken after %s: %v", what, err)
	}
	got, err := l.rd.ReadString('\n')
	if err != nil || strings.TrimSpace(got) != strings.TrimPrefix(msg, "echo ") {
		t.Fatalf("the container's TCP connection after %s: %q, %v", what, got, err)
	}
}
