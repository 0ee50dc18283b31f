package workloads

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// cliContainer is a container a manager's CLI (docker, podman, ctr) runs;
// its counter and checksums are in the CLI's logs, or in logFile.
type cliContainer struct {
	cli     string
	Name    string
	logFile string // where its stdout goes, for a CLI without logs (ctr)
}

// Logs is the container's output (docker/podman logs, or its log file).
func (c *cliContainer) Logs(t testing.TB) string {
	if c.logFile != "" {
		out, _ := os.ReadFile(c.logFile)
		return string(out)
	}
	out, _ := exec.Command(c.cli, "logs", c.Name).CombinedOutput()
	return string(out)
}

// Ticks is the container's last counter value in its logs.
func (c *cliContainer) Ticks(t testing.TB) int64 {
	var n int64
	for _, l := range strings.Split(c.Logs(t), "\n") {
		if v, ok := ParseTick(l); ok && v > n {
			n = v
		}
	}
	return n
}

// Inspect is the CLI's inspect -f format.
func (c *cliContainer) Inspect(t testing.TB, format string) string {
	out, _ := cliRun(t, c.cli, "container", "inspect", "-f", format, c.Name)
	return out
}

// Label names the container and its manager, for messages.
func (c *cliContainer) Label() string { return c.cli + " container " + c.Name }

// Managed fails unless the container's manager lists it running and runs
// a command in it (docker/podman inspect and exec).
func (c *cliContainer) Managed(t testing.TB) error {
	t.Helper()
	if st := c.Inspect(t, "{{.State.Status}}"); st != "running" {
		return fmt.Errorf("%s container %s: %q, want running", c.cli, c.Name, st)
	}
	if out, err := cliRun(t, c.cli, "exec", c.Name, "/bin/sh", "-c", "echo exec ok"); err != nil || !strings.Contains(out, "exec ok") {
		return fmt.Errorf("%s exec %s: %q %v", c.cli, c.Name, out, err)
	}
	return nil
}

// cliRun runs a manager's CLI.
func cliRun(t testing.TB, cli string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(cli, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", cli, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// imported makes, once per CLI, the image (imported, as no registry is
// reachable) holding busybox and testload.
var imported sync.Map // cli → *importOnce

type importOnce struct {
	once sync.Once
	err  error
}

func importImage(t testing.TB, cli, image string) {
	t.Helper()
	v, _ := imported.LoadOrStore(cli, &importOnce{})
	o := v.(*importOnce)
	o.once.Do(func() {
		if _, err := cliRun(t, cli, "image", "inspect", image); err == nil {
			return
		}
		dir := Bundle(t, nil, "/bin/testload")
		cmd := exec.Command("sh", "-c", "tar -C "+filepath.Join(dir, "rootfs")+" -c . | "+cli+" import - "+image)
		if out, err := cmd.CombinedOutput(); err != nil {
			o.err = fmt.Errorf("%s import: %v: %s", cli, err, out)
		}
	})
	if o.err != nil {
		t.Fatal(o.err)
	}
}

// run starts the container with the CLI's run arguments and waits until
// it ticks; it is removed at cleanup.
func (c *cliContainer) run(t testing.TB, args ...string) {
	t.Helper()
	if out, err := cliRun(t, c.cli, args...); err != nil {
		t.Fatal(out, err)
	}
	rm := []string{"rm", "-f", c.Name}
	if c.cli == "podman" {
		rm = []string{"rm", "-f", "-t", "0", c.Name} // podman's -f waits 10 s for a stop
	}
	t.Cleanup(func() { cliRun(t, c.cli, rm...) })
	c.waitTicking(t)
}

// waitTicking waits until the container's counter runs.
func (c *cliContainer) waitTicking(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(StartTimeout)
	for time.Now().Before(deadline) {
		if c.Ticks(t) > 0 {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s container %s does not tick: %s", c.cli, c.Name, TailLines(c.Logs(t), 10))
}

// SumOK waits for the container's next checksum of its memory in its
// logs and fails the test unless it is "sum OK".
func (c *cliContainer) SumOK(t testing.TB) {
	t.Helper()
	from := len(c.Logs(t))
	deadline := time.Now().Add(30 * time.Second)
	for {
		logs := c.Logs(t)
		if len(logs) > from {
			fresh := logs[from:]
			if strings.Contains(fresh, "sum BAD") {
				t.Fatalf("%s: memory changed: %s", c.Name, TailLines(fresh, 5))
			}
			if strings.Contains(fresh, "sum OK") {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s printed no checksum within 30s: %s", c.Name, TailLines(logs, 10))
		}
		time.Sleep(200 * time.Millisecond)
	}
}
