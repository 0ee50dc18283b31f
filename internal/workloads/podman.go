package workloads

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/ckpt-dev/ckpt/internal/testenv"
)

// RequirePodman needs root and the podman CLI (hack/setup.sh installs
// podman with runc).
func RequirePodman(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "podman")
	testenv.RequireTool(t, "catatonit") // a pod's infra container
}

// Podman runs the podman CLI.
func Podman(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return cliRun(t, "podman", args...)
}

// PodmanImage is an image (imported, as no registry is reachable)
// holding busybox and testload.
const PodmanImage = "localhost/ckpt-test-testload"

// PodmanGlob matches the names of the containers and pods this test
// process runs.
func PodmanGlob() string { return fmt.Sprintf("ckpt-pm-%d-*", os.Getpid()) }

// PodmanContainer is a container run by podman. Addr is testload's
// address when it shares the host's network, else "".
type PodmanContainer struct {
	cliContainer
	Addr string
}

// PodmanName is a fresh name that PodmanGlob matches.
func PodmanName() string { return fmt.Sprintf("ckpt-pm-%d-%d", os.Getpid(), Seq.Add(1)) }

// StartPodmanContainer runs testload in a podman container with memMiB
// of checksummed memory, a child, a counter on stdout and a checksum
// every second, given more podman run options (--pod P, --restart
// always); without --pod or --network it shares the host's network and
// listens on a free port. It is removed at cleanup.
func StartPodmanContainer(t testing.TB, memMiB int, runOpts ...string) *PodmanContainer {
	t.Helper()
	RequirePodman(t)
	importImage(t, "podman", PodmanImage)
	c := &PodmanContainer{cliContainer: cliContainer{cli: "podman", Name: PodmanName()}}
	args := []string{"run", "-d", "--name", c.Name, "-e", "GODEBUG=multipathtcp=0,containermaxprocs=0"}
	listen := "127.0.0.1:0"
	if !hasOpt(runOpts, "--pod") && !hasOpt(runOpts, "--network") {
		c.Addr = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
		listen = c.Addr
		args = append(args, "--network", "host")
	}
	args = append(append(args, runOpts...), PodmanImage, "/bin/testload", "-mem", strconv.Itoa(memMiB),
		"-listen", listen, "-tick", "100ms", "-sum-every", "1s")
	c.run(t, args...)
	return c
}

func hasOpt(opts []string, name string) bool {
	for _, o := range opts {
		if o == name || strings.HasPrefix(o, name+"=") {
			return true
		}
	}
	return false
}

// StartPodmanPod creates a pod with its own network namespace (no
// network) and runs n testload containers in it; the pod is removed at
// cleanup.
func StartPodmanPod(t testing.TB, memMiB, n int) (string, []*PodmanContainer) {
	t.Helper()
	RequirePodman(t)
	pod := PodmanName()
	if out, err := Podman(t, "pod", "create", "--name", pod, "--network", "none"); err != nil {
		t.Fatal(out, err)
	}
	t.Cleanup(func() { Podman(t, "pod", "rm", "-f", "-t", "0", pod) })
	var cs []*PodmanContainer
	for range n {
		cs = append(cs, StartPodmanContainer(t, memMiB, "--pod", pod))
	}
	return pod, cs
}
