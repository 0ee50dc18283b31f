package workloads

import (
	"fmt"
	"os"
	"strconv"
	"testing"

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
	return cliRun(t, "docker", args...)
}

// DockerImage is an image (imported, as no registry is reachable) holding
// busybox and testload.
const DockerImage = "ckpt-test-testload"

// DockerContainer is a container run by dockerd.
type DockerContainer struct {
	cliContainer
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
	importImage(t, "docker", DockerImage)
	c := &DockerContainer{cliContainer{cli: "docker", Name: fmt.Sprintf("ckpt-ctr-%d-%d", os.Getpid(), Seq.Add(1))}}
	args := []string{"run", "-d", "--name", c.Name, "--network", "none",
		"-e", "GODEBUG=multipathtcp=0,containermaxprocs=0"}
	args = append(append(args, runOpts...), DockerImage, "/bin/testload", "-mem", strconv.Itoa(memMiB), "-tick", "100ms", "-sum-every", "1s")
	c.run(t, args...)
	return c
}
