package podman_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/hypervisors/conformance"
	"github.com/ckpt-dev/ckpt/hypervisors/podman"
	"github.com/ckpt-dev/ckpt/internal/testenv"
	"github.com/ckpt-dev/ckpt/internal/workloads"
	"github.com/ckpt-dev/ckpt/memregion"
)

// probe implements conformance.Probe for podman containers: the counter
// and the memory checksums come from podman logs; a container on the
// host's network also keeps a TCP connection established throughout, and
// answers on it.
type probe struct {
	cs   []*workloads.PodmanContainer
	conv *workloads.Conversation
	seq  int
}

func newProbe(t *testing.T, cs ...*workloads.PodmanContainer) *probe {
	p := &probe{cs: cs}
	if cs[0].Addr != "" {
		p.conv = workloads.Converse(t, cs[0].Addr)
		p.talk(t)
	}
	return p
}

func (p *probe) talk(t *testing.T) {
	t.Helper()
	p.seq++
	msg := fmt.Sprintf("hello-%d", p.seq)
	p.conv.Send(t, "echo "+msg)
	p.conv.Expect(t, msg)
}

// Counter is the smallest of the containers' counters: it grows only
// while all of them run.
func (p *probe) Counter(t *testing.T) int64 {
	n := int64(-1)
	for _, c := range p.cs {
		if v := c.Ticks(t); n < 0 || v < n {
			n = v
		}
	}
	return n
}

// Intact waits for each container's next checksum of its memory and
// checks that podman manages it: podman ps lists it running, podman exec
// works, its child lives; the established connection answers.
func (p *probe) Intact(t *testing.T) {
	t.Helper()
	for _, c := range p.cs {
		c.SumOK(t)
		if st := c.Inspect(t, "{{.State.Status}}"); st != "running" {
			t.Fatalf("podman inspect %s: %q, want running", c.Name, st)
		}
		if ps, err := workloads.Podman(t, "ps", "--format", "{{.Names}}"); err != nil || !strings.Contains(ps, c.Name) {
			t.Fatalf("podman ps does not list %s: %q %v", c.Name, ps, err)
		}
		// testload's child is a shell looping on sleep.
		if out, err := workloads.Podman(t, "exec", c.Name, "/bin/sh", "-c", "echo exec ok; ls /proc | grep -c '^[0-9]'"); err != nil || !strings.Contains(out, "exec ok") {
			t.Fatalf("podman exec %s: %q %v", c.Name, out, err)
		} else if n, _ := strconv.Atoi(strings.TrimSpace(out[strings.LastIndex(out, "\n")+1:])); n < 3 {
			t.Fatalf("podman exec %s: %d processes, want testload, its child and more", c.Name, n)
		}
	}
	if p.conv != nil {
		p.talk(t)
	}
}

func newBackend(t *testing.T) *podman.Backend {
	t.Helper()
	workloads.RequirePodman(t)
	b, err := podman.New(context.Background(), podman.Config{Containers: []string{workloads.PodmanGlob()}, Pods: []string{workloads.PodmanGlob()}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConformance(t *testing.T) {
	b := newBackend(t)
	t.Logf("podman %s", b.Version())
	conformance.Run(t, conformance.Harness{
		Backend: b,
		Start: func(t *testing.T) (string, conformance.Probe) {
			c := workloads.StartPodmanContainer(t, 64)
			return c.Name, newProbe(t, c)
		},
		DumpEnds: true,
	})
}

// A pod is one workload: its two containers and its infra container are
// frozen, dumped and restored together, and afterwards the members share
// the restored infra container's namespaces again.
func TestPodConformance(t *testing.T) {
	b := newBackend(t)
	conformance.Run(t, conformance.Harness{
		Backend: b,
		Start: func(t *testing.T) (string, conformance.Probe) {
			pod, cs := workloads.StartPodmanPod(t, 32, 2)
			t.Cleanup(func() { checkPodShares(t, pod, cs) })
			return podman.PodPrefix + pod, newProbe(t, cs...)
		},
		DumpEnds: true,
	})
}

// checkPodShares checks, while the pod runs, that each member is in the
// network and IPC namespaces of the pod's infra container, and that
// podman reports the pod running.
func checkPodShares(t *testing.T, pod string, cs []*workloads.PodmanContainer) {
	t.Helper()
	if t.Failed() {
		return
	}
	infra, err := workloads.Podman(t, "pod", "inspect", "--format", "{{.InfraContainerID}}", pod)
	if err != nil {
		t.Fatal(err)
	}
	ns := func(ctr, kind string) string {
		pid, err := workloads.Podman(t, "container", "inspect", "-f", "{{.State.Pid}}", ctr)
		if err != nil {
			t.Fatal(err)
		}
		l, err := os.Readlink(filepath.Join("/proc", pid, "ns", kind))
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	for _, kind := range []string{"net", "ipc"} {
		want := ns(infra, kind)
		for _, c := range cs {
			if got := ns(c.Name, kind); got != want {
				t.Errorf("%s is in %s, the pod's infra container in %s", c.Name, got, want)
			}
		}
	}
	if st, _ := workloads.Podman(t, "pod", "inspect", "--format", "{{.State}}", pod); st != "Running" {
		t.Errorf("podman pod inspect %s: %q, want Running", pod, st)
	}
}

// The preflight refuses what podman cannot checkpoint in place, saying
// why and what to do: a --rm container, a paused one, one sharing
// namespaces with another outside a pod.
func TestPreflightRefuses(t *testing.T) {
	b := newBackend(t)
	ctx := context.Background()
	w := func(name string) hypervisors.Workload {
		return hypervisors.Workload{ID: name, Kind: podman.KindContainer, Backend: podman.Name}
	}
	plain := workloads.StartPodmanContainer(t, 16)
	if err := b.Preflight(ctx, w(plain.Name)); err != nil {
		t.Fatalf("preflight of a plain container: %v", err)
	}
	rm := workloads.StartPodmanContainer(t, 16, "--rm")
	paused := workloads.StartPodmanContainer(t, 16)
	if out, err := workloads.Podman(t, "pause", paused.Name); err != nil {
		t.Fatal(out, err)
	}
	shared := workloads.StartPodmanContainer(t, 16, "--network", "container:"+plain.Name)
	for _, tc := range []struct{ name, want string }{{rm.Name, "--rm"}, {paused.Name, "paused"}, {shared.Name, "pod"}} {
		err := b.Preflight(ctx, w(tc.name))
		if !errors.Is(err, hypervisors.ErrNotCheckpointable) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("preflight of %s: %v; want a refusal naming %q", tc.name, err, tc.want)
		}
	}
	workloads.Podman(t, "unpause", paused.Name)
}

// Rootless podman cannot checkpoint: its containers are listed (from the
// conmon that runs each under its user) and refused with the reason.
func TestRootlessRefused(t *testing.T) {
	proc := t.TempDir()
	conmon := filepath.Join(proc, "4242")
	os.MkdirAll(conmon, 0o755)
	os.WriteFile(filepath.Join(conmon, "comm"), []byte("conmon\n"), 0o644)
	os.WriteFile(filepath.Join(conmon, "status"), []byte("Name:\tconmon\nUid:\t1000\t1000\t1000\t1000\n"), 0o644)
	cmdline := strings.Join([]string{"/usr/bin/conmon", "--api-version", "1", "-c", "0123456789ab", "-u", "0123456789ab", "-r", "/usr/bin/crun", "-b", "/home/u/.local/share/containers/storage/overlay-containers/0123456789ab/userdata", "-n", "web", "--exit-dir", "/run/user/1000/libpod/tmp/exits"}, "\x00") + "\x00"
	os.WriteFile(filepath.Join(conmon, "cmdline"), []byte(cmdline), 0o644)
	rootConmon := filepath.Join(proc, "99")
	os.MkdirAll(rootConmon, 0o755)
	os.WriteFile(filepath.Join(rootConmon, "comm"), []byte("conmon\n"), 0o644)
	os.WriteFile(filepath.Join(rootConmon, "status"), []byte("Uid:\t0\t0\t0\t0\n"), 0o644)
	os.WriteFile(filepath.Join(rootConmon, "cmdline"), []byte(strings.ReplaceAll(cmdline, "web", "rootweb")), 0o644)

	workloads.RequirePodman(t)
	b, err := podman.New(context.Background(), podman.Config{Containers: []string{"rootless:*", "nothing-else"}, ProcRoot: proc}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ws, err := b.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 1 || ws[0].ID != "rootless:1000:web" {
		t.Fatalf("Discover: %+v; want the one rootless container", ws)
	}
	err = b.Preflight(context.Background(), ws[0])
	if !errors.Is(err, hypervisors.ErrNotCheckpointable) || !strings.Contains(err.Error(), "rootless") || !strings.Contains(err.Error(), "uid 1000") {
		t.Fatalf("preflight: %v; want a refusal naming rootless and the uid", err)
	}
	if err := b.Freeze(context.Background(), ws[0]); !errors.Is(err, hypervisors.ErrNotCheckpointable) {
		t.Fatalf("Freeze of a rootless container: %v", err)
	}
}

// podman's restart policy does not restart a container its checkpoint
// ended, and the restore brings it back with the policy it had.
func TestRestartAlwaysStaysDownUntilRestore(t *testing.T) {
	b := newBackend(t)
	c := workloads.StartPodmanContainer(t, 16, "--restart", "always")
	ctx := context.Background()
	w := hypervisors.Workload{ID: c.Name, Kind: podman.KindContainer, Backend: podman.Name}
	r := testenv.Region(t, "", memregion.KindRaw, memregion.GiB)
	p := newProbe(t, c)
	if err := b.Freeze(ctx, w); err != nil {
		t.Fatal(err)
	}
	recipe, err := b.Dump(ctx, w, hypervisors.RegionSink{Region: r, Prefix: "podman/" + c.Name})
	if err != nil {
		b.Thaw(ctx, w)
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // time for podman to restart it, if it would
	if st := c.Inspect(t, "{{.State.Status}}"); st != "exited" {
		t.Errorf("after the checkpoint: %q, want exited", st)
	}
	before := c.Ticks(t)
	var names []string
	for _, o := range r.Objects() {
		names = append(names, o.Name)
	}
	m := &memregion.Manifest{Workloads: []memregion.WorkloadRecord{{ID: c.Name, Kind: w.Kind, Backend: w.Backend, Objects: names, Restore: recipe}}}
	if err := r.Seal(ctx, m); err != nil {
		t.Fatal(err)
	}
	if m, err = r.Verify(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Finish(ctx, w); err != nil {
		t.Fatal(err)
	}
	if err := b.Restore(ctx, w, recipe, hypervisors.RegionSource{Region: r, Manifest: m, Prefix: "podman/" + c.Name}); err != nil {
		t.Fatal(err)
	}
	if pol := c.Inspect(t, "{{.HostConfig.RestartPolicy.Name}}"); pol != "always" {
		t.Errorf("restart policy after the resume: %q, want always", pol)
	}
	p.Intact(t)
	if after := c.Ticks(t); after <= before {
		t.Errorf("counter %d after the resume, %d before (a fresh start counts from 1)", after, before)
	}
}
