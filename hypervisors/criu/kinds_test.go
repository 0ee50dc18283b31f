package criu_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/hypervisors/conformance"
	"github.com/ckpt-dev/ckpt/hypervisors/criu"
	"github.com/ckpt-dev/ckpt/internal/testenv"
	"github.com/ckpt-dev/ckpt/internal/workloads"
	"github.com/ckpt-dev/ckpt/memregion"
)

// TestProcessKindsRoundTrip: process trees that plain CRIU handles given
// the right options go through ckpt too, which finds what they need: a
// held file lock (--file-locks) and an open file whose name is gone while
// another hard link stays (--link-remap, through a CRIU configuration
// file, as runc has no flag for it). After a round trip through a region
// the container runs on with its memory and still holds both.
func TestProcessKindsRoundTrip(t *testing.T) {
	for _, tc := range []struct{ name, flag, want string }{
		{"file lock", "-flock", "held flock"},
		{"unlinked file", "-unlinked", "held unlinked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "runc")
			b, logs := newBackendLogs(t, root)
			c := workloads.StartContainerArgs(t, root, workloads.Checkpointable, 16, tc.flag, "/tmp/held")
			if got, err := c.Ask("held"); err != nil || got != tc.want {
				t.Fatalf("before: %q, %v", got, err)
			}
			roundTrip(t, b, c, logs)
			if got, err := c.Ask("held"); err != nil || got != tc.want {
				t.Fatalf("after the restore: %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestStoppedTask: a container holding a stopped task (SIGSTOP) is
// suspended and restored with that task stopped, and a rolled back
// suspend leaves it stopped too, the rest running. (CRIU alone hangs on
// it: a task frozen and stopped cannot be seized.)
func TestStoppedTask(t *testing.T) {
	for _, how := range []string{"restore", "rollback"} {
		t.Run(how, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "runc")
			b, logs := newBackendLogs(t, root)
			c := workloads.StartContainerArgs(t, root, workloads.Checkpointable, 16, "-child", "/bin/busybox sleep 100000")
			child := childPid(t, c)
			syscall.Kill(child, syscall.SIGSTOP)
			waitState(t, child, "T")
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			w := findWorkload(t, b, c.ID)
			if err := b.Preflight(ctx, w); err != nil {
				t.Fatalf("Preflight: %v", err)
			}
			if how == "restore" {
				roundTrip(t, b, c, logs)
			} else {
				r := testenv.Region(t, "", memregion.KindDir, memregion.GiB)
				if err := b.Freeze(ctx, w); err != nil {
					t.Fatal(err)
				}
				if _, err := b.Dump(ctx, w, hypervisors.RegionSink{Region: r, Prefix: w.ID}); err != nil {
					b.Thaw(context.Background(), w)
					t.Fatalf("Dump: %v", err)
				}
				if err := b.Thaw(ctx, w); err != nil {
					t.Fatalf("Thaw: %v", err)
				}
				conformanceRunsOn(t, &probe{c: c, logDir: logs})
			}
			// The container runs (checked above); its child is stopped.
			waitState(t, childPid(t, c), "T")
			if ch, err := c.Ask("child"); err != nil || !strings.HasSuffix(ch, "alive") {
				t.Fatalf("child: %q, %v", ch, err)
			}
		})
	}
}

// roundTrip freezes, dumps into a dir region, seals, finishes and
// restores the container, and checks it runs on; a failed dump must
// leave it running (the rollback).
func roundTrip(t *testing.T, b *criu.Runtime, c *workloads.Container, logs string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w := findWorkload(t, b, c.ID)
	if err := b.Preflight(ctx, w); err != nil {
		t.Fatalf("Preflight: %v", err)
	}
	r := testenv.Region(t, "", memregion.KindDir, memregion.GiB)
	if err := b.Freeze(ctx, w); err != nil {
		t.Fatalf("Freeze: %v", err)
	}
	p := &probe{c: c, logDir: logs}
	frozenAt := p.Counter(t)
	recipe, err := b.Dump(ctx, w, hypervisors.RegionSink{Region: r, Prefix: w.ID})
	if err != nil {
		terr := b.Thaw(ctx, w)
		c2 := p.Counter(t)
		time.Sleep(time.Second)
		t.Fatalf("Dump: %v\n(thaw: %v; running again: %v)", err, terr, p.Counter(t) > c2)
	}
	var objs []string
	for _, o := range r.Objects() {
		objs = append(objs, o.Name)
	}
	m := &memregion.Manifest{Workloads: []memregion.WorkloadRecord{{ID: w.ID, Kind: w.Kind, Backend: w.Backend, Objects: objs, Restore: recipe}}}
	if err := r.Seal(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := b.Finish(ctx, w); err != nil {
		t.Fatalf("Finish: %v", err)
	}
	m, err = r.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Restore(ctx, w, json.RawMessage(m.Workloads[0].Restore), hypervisors.RegionSource{Region: r, Manifest: m, Prefix: w.ID}); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for p.Counter(t) <= frozenAt && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if p.Counter(t) <= frozenAt {
		t.Fatal("the restored container does not run")
	}
	if sum, err := c.Ask("sum"); err != nil || !strings.HasPrefix(sum, "sum OK") {
		t.Fatalf("memory: %q, %v", sum, err)
	}
}

func findWorkload(t *testing.T, b *criu.Runtime, id string) hypervisors.Workload {
	t.Helper()
	ws, err := b.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range ws {
		if w.ID == id {
			return w
		}
	}
	t.Fatalf("no workload %s", id)
	return hypervisors.Workload{}
}

// childPid is the container's child as the host sees it: the container
// reports its pid in its own namespace.
func childPid(t *testing.T, c *workloads.Container) int {
	t.Helper()
	ans, err := c.Ask("child")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(ans)
	if len(f) < 2 {
		t.Fatalf("child: %q", ans)
	}
	n, _ := strconv.Atoi(f[1])
	return hostPid(t, c, n)
}

// hostPid maps a pid of c's pid namespace to the host's, through NSpid in
// /proc (identity when no task has it as an inner pid). Only c's
// namespace counts: the containers of tests running in parallel have
// children of the same inner pid, which CRIU may be dumping (traced).
func hostPid(t *testing.T, c *workloads.Container, inner int) int {
	t.Helper()
	var st struct {
		Pid int `json:"init_process_pid"`
	}
	raw, err := os.ReadFile(filepath.Join(c.Root, c.ID, "state.json"))
	if err == nil {
		err = json.Unmarshal(raw, &st)
	}
	if err != nil {
		t.Fatalf("runc state of %s: %v", c.ID, err)
	}
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", st.Pid))
	if err != nil {
		t.Fatalf("pid namespace of %s: %v", c.ID, err)
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, _ := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "pid")); l != ns {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "NSpid:"); ok {
				f := strings.Fields(v)
				if len(f) > 1 && f[len(f)-1] == strconv.Itoa(inner) && strings.Contains(procCmdline(pid), "sleep") {
					return pid
				}
			}
		}
	}
	return inner
}

func procCmdline(pid int) string {
	b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	return strings.ReplaceAll(string(b), "\x00", " ")
}

func waitState(t *testing.T, pid int, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var st string
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i > 0 && i+2 < len(s) {
			st = s[i+2 : i+3]
			if st == want {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("pid %d is in state %q, want %q", pid, st, want)
}

// locked says whether some process holds a flock (from /proc/locks).
func locked(t *testing.T) bool {
	b, err := os.ReadFile("/proc/locks")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), "FLOCK")
}

// conformanceRunsOn checks the container's counter moves, now and a
// second later.
func conformanceRunsOn(t *testing.T, p *probe) {
	t.Helper()
	c := conformance.Advancing(t, p, p.Counter(t))
	time.Sleep(time.Second)
	conformance.Advancing(t, p, c)
}

// TestUnlinkedFileRollback: a dump with link remaps ends the container
// (CRIU deletes them from a workload that lives on), so the rollback
// brings it back from its images, holding the file.
func TestUnlinkedFileRollback(t *testing.T) {
	root := filepath.Join(t.TempDir(), "runc")
	b, logs := newBackendLogs(t, root)
	c := workloads.StartContainerArgs(t, root, workloads.Checkpointable, 16, "-unlinked", "/tmp/held")
	ctx := context.Background()
	w := findWorkload(t, b, c.ID)
	r := testenv.Region(t, "", memregion.KindRaw, memregion.GiB)
	if err := b.Freeze(ctx, w); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Dump(ctx, w, hypervisors.RegionSink{Region: r, Prefix: w.ID}); err != nil {
		b.Thaw(ctx, w)
		t.Fatalf("Dump: %v", err)
	}
	if err := b.Thaw(ctx, w); err != nil {
		t.Fatalf("Thaw: %v", err)
	}
	if err := r.Discard(); err != nil {
		t.Fatal(err)
	}
	conformanceRunsOn(t, &probe{c: c, logDir: logs})
	if got, err := c.Ask("held"); err != nil || got != "held unlinked" {
		t.Fatalf("after the rollback: %q, %v", got, err)
	}
}
