package containerd_test

import (
	"context"
	"testing"

	"github.com/ckpt-dev/ckpt/hypervisors/conformance"
	"github.com/ckpt-dev/ckpt/hypervisors/containerd"
	"github.com/ckpt-dev/ckpt/internal/workloads"
)

// BenchmarkDumpRestore measures, side by side in one run on containers of
// the same memory, what containerd's task checkpoint and restore cost
// (CRIU writing straight into a directory region on tmpfs, through
// containerd's shim and runc), against the criu backend on a bare runc
// container in the same kind of region, and memcpy of the same bytes.
func BenchmarkDumpRestore(b *testing.B) {
	workloads.RequireContainerd(b)
	c, err := containerd.New(context.Background(), containerd.Config{Containers: []string{workloads.ContainerdGlob()}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	conformance.BenchDumpRestore(b, 256, conformance.BenchMode{Name: "containerd", Backend: c,
		Start: func(b *testing.B, mib int) string { return workloads.StartContainerdContainer(b, mib).Workload() }},
		conformance.RuncMode(b))
}
