package criu_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors/conformance"
	"github.com/ckpt-dev/ckpt/hypervisors/criu"
	"github.com/ckpt-dev/ckpt/internal/testenv"
	"github.com/ckpt-dev/ckpt/internal/workloads"
)

// treeCgroups are the cgroups a test process tree joins: on a v1 host one
// of its own in every hierarchy (the freezer first), as a service has; on
// v2 one in the unified tree. A tree left in a hierarchy's root makes CRIU
// dump that whole hierarchy (every cgroup below the root): a cgroup
// another test (podman's) removes before the restore then fails it ("bad
// cgroup path …/pids.max").
func treeCgroups(t testing.TB, name string) []string {
	t.Helper()
	if _, err := os.Stat("/sys/fs/cgroup/freezer"); err != nil {
		return []string{"/sys/fs/cgroup/" + name}
	}
	dirs := []string{"/sys/fs/cgroup/freezer/" + name}
	ents, _ := os.ReadDir("/sys/fs/cgroup")
	for _, e := range ents {
		h := filepath.Join("/sys/fs/cgroup", e.Name())
		if e.Name() == "freezer" || !e.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(h, "cgroup.procs")); err == nil {
			dirs = append(dirs, filepath.Join(h, name))
		}
	}
	return dirs
}

// startTree runs testload as a plain process tree (its own session, stdout
// on a pipe, a child process) in a fresh cgroup /<id>.
func startTree(t *testing.T, memMiB int) *workloads.Container {
	t.Helper()
	port := workloads.FreePort(t)
	c := &workloads.Container{ID: fmt.Sprintf("ckpt-tree-%d-%d", os.Getpid(), workloads.Seq.Add(1)), Addr: fmt.Sprintf("127.0.0.1:%d", port)}
	dirs := treeCgroups(t, c.ID)
	join := ""
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(d, "/cpuset/") { // an empty cpuset takes no task
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				join += fmt.Sprintf("cat %s/%s > %s/%s; ", filepath.Dir(d), f, d, f)
			}
		}
		join += fmt.Sprintf("echo $$ > %s/cgroup.procs; ", d)
	}
	bin := testenv.StaticBinary(t, "./internal/testload")
	// A supervisor outside the cgroup is the tree's parent and reaps its
	// orphans, as systemd does for a service.
	cmd := exec.Command(bin, "-supervise", "/bin/sh", "-c", join+"exec "+bin+" -mem "+strconv.Itoa(memMiB)+" -listen "+c.Addr)
	cmd.Env = append(os.Environ(), workloads.Checkpointable...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	go c.Drain(pr)
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		for _, d := range dirs {
			b, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		if _, err := os.Stat(dirs[0] + "/freezer.state"); err == nil {
			os.WriteFile(dirs[0]+"/freezer.state", []byte("THAWED"), 0)
		}
		for _, d := range dirs {
			for i := 0; i < 50 && os.Remove(d) != nil; i++ {
				time.Sleep(100 * time.Millisecond)
			}
		}
	})
	deadline := time.Now().Add(workloads.StartTimeout)
	for time.Now().Before(deadline) {
		if _, err := c.Ask("tick"); err == nil {
			return c
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("process tree %s did not answer on %s", c.ID, c.Addr)
	return nil
}

// TestProcessTreeConformance runs the suite on plain process trees given
// to the backend as a cgroup glob.
func TestProcessTreeConformance(t *testing.T) {
	b, logs := newBackendLogsCfg(t, filepath.Join(t.TempDir(), "runc"), func(c *criu.Config) {
		c.ProcessTrees = []string{fmt.Sprintf("/ckpt-tree-%d-*", os.Getpid())}
	})
	conformance.Run(t, conformance.Harness{
		Backend: b,
		Start: func(t *testing.T) (string, conformance.Probe) {
			c := startTree(t, testMemMiB)
			return "cgroup:/" + c.ID, &probe{c: c, logDir: logs, tree: true}
		},
	})
}
