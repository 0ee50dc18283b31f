package podman_test

import (
	"context"
	"testing"

	"github.com/ckpt-dev/ckpt/hypervisors/conformance"
	"github.com/ckpt-dev/ckpt/hypervisors/podman"
	"github.com/ckpt-dev/ckpt/internal/workloads"
)

// BenchmarkDumpRestore measures, side by side in one run on containers of
// the same memory, what podman's own checkpoint costs:
//   - podman: podman container checkpoint (images on /var/lib first,
//     then copied into a directory region on tmpfs) and podman container
//     restore (images copied back first);
//   - runc: the criu backend on a bare runc container, CRIU writing into
//     the same kind of region in place;
//   - memcpy of the same bytes.
func BenchmarkDumpRestore(b *testing.B) {
	workloads.RequirePodman(b)
	p, err := podman.New(context.Background(), podman.Config{Containers: []string{workloads.PodmanGlob()}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	conformance.BenchDumpRestore(b, 256, conformance.BenchMode{Name: "podman", Backend: p,
		Start: func(b *testing.B, mib int) string { return workloads.StartPodmanContainer(b, mib).Name }},
		conformance.RuncMode(b))
}
