package workloads

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/internal/testenv"
)

// ContainerdNamespace is the containerd namespace the tests' containers
// run in.
const ContainerdNamespace = "ckpt-test"

// ContainerdImage is the image (made from podman's imported one, as no
// registry is reachable) holding busybox and testload.
const ContainerdImage = PodmanImage + ":latest"

// RequireContainerd needs root, ctr and a running containerd
// (hack/setup.sh installs it with docker.io and starts it), and podman,
// which makes the image.
func RequireContainerd(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "ctr")
	if out, err := exec.Command("ctr", "version").CombinedOutput(); err != nil {
		testenv.Missing(t, fmt.Sprintf("containerd does not answer (hack/setup.sh starts it): %v: %s", err, TailLines(string(out), 2)))
	}
	RequirePodman(t)
}

// Ctr runs ctr in ContainerdNamespace.
func Ctr(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return cliRun(t, "ctr", append([]string{"-n", ContainerdNamespace}, args...)...)
}

// ContainerdGlob matches the workload IDs (NAMESPACE/ID) of the
// containers this test process runs.
func ContainerdGlob() string { return fmt.Sprintf("%s/ckpt-cd-%d-*", ContainerdNamespace, os.Getpid()) }

// ContainerdContainer is a container run by containerd (ctr run), with
// its stdout in a log file. Addr is testload's address on the host's
// network.
type ContainerdContainer struct {
	cliContainer
	Addr string
}

// Workload is the container's workload ID in the containerd backend.
func (c *ContainerdContainer) Workload() string { return ContainerdNamespace + "/" + c.Name }

// TaskStatus is the task's status in ctr task ls (RUNNING, PAUSED, …),
// "" when it has none.
func (c *ContainerdContainer) TaskStatus(t testing.TB) string {
	out, err := Ctr(t, "task", "ls")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == c.Name {
			return f[2]
		}
	}
	return ""
}

// Managed fails unless ctr task ls lists the task running and ctr task
// exec runs a command in it.
func (c *ContainerdContainer) Managed(t testing.TB) error {
	t.Helper()
	if st := c.TaskStatus(t); st != "RUNNING" {
		return fmt.Errorf("ctr task ls: %s is %q, want RUNNING", c.Name, st)
	}
	id := fmt.Sprintf("ckpt-exec-%d", Seq.Add(1))
	if out, err := Ctr(t, "task", "exec", "--exec-id", id, c.Name, "/bin/sh", "-c", "echo exec ok"); err != nil || !strings.Contains(out, "exec ok") {
		return fmt.Errorf("ctr task exec %s: %q %v", c.Name, out, err)
	}
	return nil
}

// importContainerdImage puts podman's test image into containerd's test
// namespace, once per process.
func importContainerdImage(t testing.TB) {
	t.Helper()
	importImage(t, "podman", PodmanImage)
	v, _ := imported.LoadOrStore("ctr", &importOnce{})
	o := v.(*importOnce)
	o.once.Do(func() {
		if out, err := Ctr(t, "image", "ls", "-q"); err == nil && strings.Contains(out, ContainerdImage) {
			return
		}
		tar := filepath.Join(os.TempDir(), fmt.Sprintf("ckpt-ctr-image-%d.tar", os.Getpid()))
		defer os.Remove(tar)
		if out, err := cliRun(t, "podman", "save", "--format", "docker-archive", "-o", tar, PodmanImage); err != nil {
			o.err = fmt.Errorf("%s: %w", out, err)
			return
		}
		if out, err := Ctr(t, "image", "import", tar); err != nil {
			o.err = fmt.Errorf("%s: %w", out, err)
		}
	})
	if o.err != nil {
		t.Fatal(o.err)
	}
}

// StartContainerdContainer runs testload in a containerd container (ctr
// run -d, on the host's network, listening on a free port) with memMiB
// of checksummed memory, a child, a counter on stdout and a checksum
// every second. It is removed at cleanup.
func StartContainerdContainer(t testing.TB, memMiB int) *ContainerdContainer {
	t.Helper()
	RequireContainerd(t)
	importContainerdImage(t)
	name := fmt.Sprintf("ckpt-cd-%d-%d", os.Getpid(), Seq.Add(1))
	logDir, err := os.MkdirTemp("", "ckpt-ctr-log-")
	if err != nil {
		t.Fatal(err)
	}
	c := &ContainerdContainer{cliContainer: cliContainer{cli: "ctr", Name: name, logFile: filepath.Join(logDir, "stdout.log")},
		Addr: fmt.Sprintf("127.0.0.1:%d", FreePort(t))}
	t.Cleanup(func() {
		Ctr(t, "task", "kill", "-s", "KILL", name)
		for i := 0; i < 50 && c.TaskStatus(t) == "RUNNING"; i++ {
			time.Sleep(100 * time.Millisecond)
		}
		Ctr(t, "task", "rm", "-f", name)
		Ctr(t, "container", "rm", name)
		os.RemoveAll(logDir)
	})
	if out, err := Ctr(t, "run", "-d", "--net-host", "--log-uri", "file://"+c.logFile,
		"--env", "GODEBUG=multipathtcp=0,containermaxprocs=0",
		ContainerdImage, name, "/bin/testload", "-mem", strconv.Itoa(memMiB),
		"-listen", c.Addr, "-tick", "100ms", "-sum-every", "1s"); err != nil {
		t.Fatal(out, err)
	}
	c.waitTicking(t)
	return c
}
