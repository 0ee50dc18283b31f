package workloads

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/internal/testenv"
)

// RequireDocker needs the docker CLI and a running dockerd (hack/setup.sh
// installs docker.io and starts it with experimental features).
func RequireDocker(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "docker")
	if _, err := os.Stat("/run/docker.sock"); err != nil {
		testenv.Missing(t, "dockerd is not running (no /run/docker.sock; hack/setup.sh starts it)")
	}
}

// Docker runs the docker CLI.
func Docker(t testing.TB, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

var (
	dockerImageOnce sync.Once
	dockerImageErr  error
)

// DockerImage is an image (imported, as no registry is reachable) holding
// busybox and testload.
const DockerImage = "ckpt-test-testload"

// DockerContainer is a container run by dockerd.
type DockerContainer struct {
	Name string
}

// DockerGlob matches the names of the containers this test process runs.
func DockerGlob() string { return fmt.Sprintf("ckpt-ctr-%d-*", os.Getpid()) }

// StartDockerContainer runs testload in a Docker container with memMiB
// of checksummed memory, a child, a counter on stdout and a checksum
// every second, given more docker run options (--restart always, say);
// it is removed at cleanup.
func StartDockerContainer(t testing.TB, memMiB int, runOpts ...string) *DockerContainer {
	t.Helper()
	RequireDocker(t)
	dockerImageOnce.Do(func() {
		if _, err := Docker(t, "image", "inspect", DockerImage); err == nil {
			return
		}
		dir := Bundle(t, nil, "/bin/testload")
		cmd := exec.Command("sh", "-c", "tar -C "+filepath.Join(dir, "rootfs")+" -c . | docker import - "+DockerImage)
		if out, err := cmd.CombinedOutput(); err != nil {
			dockerImageErr = fmt.Errorf("docker import: %v: %s", err, out)
		}
	})
	if dockerImageErr != nil {
		t.Fatal(dockerImageErr)
	}
	c := &DockerContainer{Name: fmt.Sprintf("ckpt-ctr-%d-%d", os.Getpid(), Seq.Add(1))}
	args := []string{"run", "-d", "--name", c.Name, "--network", "none",
		"-e", "GODEBUG=multipathtcp=0,containermaxprocs=0"}
	args = append(append(args, runOpts...), DockerImage, "/bin/testload", "-mem", strconv.Itoa(memMiB), "-tick", "100ms", "-sum-every", "1s")
	if out, err := Docker(t, args...); err != nil {
		t.Fatal(out, err)
	}
	t.Cleanup(func() { Docker(t, "rm", "-f", c.Name) })
	deadline := time.Now().Add(StartTimeout)
	for time.Now().Before(deadline) {
		if c.Ticks(t) > 0 {
			return c
		}
		time.Sleep(200 * time.Millisecond)
	}
	logs, _ := Docker(t, "logs", c.Name)
	t.Fatalf("docker container %s does not tick: %s", c.Name, TailLines(logs, 10))
	return nil
}

// Logs is the container's output (docker logs).
func (c *DockerContainer) Logs(t testing.TB) string {
	out, _ := exec.Command("docker", "logs", c.Name).CombinedOutput()
	return string(out)
}

// Ticks is the container's last counter value in its logs.
func (c *DockerContainer) Ticks(t testing.TB) int64 {
	var n int64
	for _, l := range strings.Split(c.Logs(t), "\n") {
		if v, ok := ParseTick(l); ok && v > n {
			n = v
		}
	}
	return n
}

// Inspect is docker inspect -f format.
func (c *DockerContainer) Inspect(t testing.TB, format string) string {
	out, _ := Docker(t, "inspect", "-f", format, c.Name)
	return out
}
