package containerd_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/hypervisors/conformance"
	"github.com/ckpt-dev/ckpt/hypervisors/containerd"
	"github.com/ckpt-dev/ckpt/internal/workloads"
)

// probe implements conformance.Probe for a containerd container: the
// counter and the checksums come from its log file; it keeps a TCP
// connection established throughout (it is on the host's network) and
// answers on it.
type probe struct {
	c    *workloads.ContainerdContainer
	conv *workloads.Conversation
	seq  int
}

func newProbe(t *testing.T, c *workloads.ContainerdContainer) *probe {
	p := &probe{c: c, conv: workloads.Converse(t, c.Addr)}
	p.talk(t)
	return p
}

func (p *probe) talk(t *testing.T) {
	t.Helper()
	p.seq++
	msg := fmt.Sprintf("hello-%d", p.seq)
	p.conv.Send(t, "echo "+msg)
	p.conv.Expect(t, msg)
}

func (p *probe) Counter(t *testing.T) int64 { return p.c.Ticks(t) }

// Intact waits for the next checksum of the container's memory and checks
// that containerd manages it: ctr task ls lists it RUNNING, ctr task exec
// works and sees testload's child; the established connection answers.
func (p *probe) Intact(t *testing.T) {
	t.Helper()
	p.c.SumOK(t)
	if st := p.c.TaskStatus(t); st != "RUNNING" {
		t.Fatalf("ctr task ls: %s is %q, want RUNNING", p.c.Name, st)
	}
	p.seq++
	out, err := workloads.Ctr(t, "task", "exec", "--exec-id", fmt.Sprintf("probe-%d", p.seq), p.c.Name,
		"/bin/sh", "-c", "echo exec ok; ls /proc | grep -c '^[0-9]'")
	if err != nil || !strings.Contains(out, "exec ok") {
		t.Fatalf("ctr task exec %s: %q %v", p.c.Name, out, err)
	}
	if n, _ := strconv.Atoi(strings.TrimSpace(out[strings.LastIndex(out, "\n")+1:])); n < 3 {
		t.Fatalf("ctr task exec %s: %d processes, want testload, its child and more", p.c.Name, n)
	}
	if info, err := workloads.Ctr(t, "container", "info", p.c.Name); err != nil || strings.Contains(info, "org.criu.config") {
		t.Fatalf("ctr container info %s: the spec keeps the restore's CRIU annotation (or %v)", p.c.Name, err)
	}
	p.talk(t)
}

func newBackend(t *testing.T) *containerd.Backend {
	t.Helper()
	workloads.RequireContainerd(t)
	b, err := containerd.New(context.Background(), containerd.Config{Containers: []string{workloads.ContainerdGlob()}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestConformance(t *testing.T) {
	b := newBackend(t)
	t.Logf("containerd %s", b.Version())
	conformance.Run(t, conformance.Harness{
		Backend: b,
		Start: func(t *testing.T) (string, conformance.Probe) {
			c := workloads.StartContainerdContainer(t, 64)
			return c.Workload(), newProbe(t, c)
		},
		DumpEnds: true,
	})
}

// The preflight refuses kubelet's containers and a paused task, saying
// why.
func TestPreflightRefuses(t *testing.T) {
	b := newBackend(t)
	ctx := context.Background()
	c := workloads.StartContainerdContainer(t, 16)
	w := hypervisors.Workload{ID: c.Workload(), Kind: containerd.KindContainer, Backend: containerd.Name}
	if err := b.Preflight(ctx, w); err != nil {
		t.Fatalf("preflight of a plain container: %v", err)
	}
	k8s := hypervisors.Workload{ID: containerd.KubernetesNamespace + "/pod-abc", Kind: containerd.KindContainer, Backend: containerd.Name}
	if err := b.Preflight(ctx, k8s); !errors.Is(err, hypervisors.ErrNotCheckpointable) || !strings.Contains(err.Error(), "kubelet") {
		t.Errorf("preflight of a k8s.io container: %v; want a refusal naming kubelet", err)
	}
	if out, err := workloads.Ctr(t, "task", "pause", c.Name); err != nil {
		t.Fatal(out, err)
	}
	defer workloads.Ctr(t, "task", "resume", c.Name)
	if err := b.Preflight(ctx, w); !errors.Is(err, hypervisors.ErrNotCheckpointable) || !strings.Contains(err.Error(), "paused") {
		t.Errorf("preflight of a paused task: %v; want a refusal naming paused", err)
	}
}
