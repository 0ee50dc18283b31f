package docker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/hypervisors/conformance"
	"github.com/ckpt-dev/ckpt/hypervisors/docker"
	"github.com/ckpt-dev/ckpt/internal/testenv"
	"github.com/ckpt-dev/ckpt/internal/workloads"
	"github.com/ckpt-dev/ckpt/memregion"
)

// probe implements conformance.Probe for a Docker container.
type probe struct{ c *workloads.DockerContainer }

func (p *probe) Counter(t *testing.T) int64 { return p.c.Ticks(t) }

// Intact waits for the container's next checksum of its memory, and
// checks that dockerd manages it: docker ps lists it running, docker exec
// works, its child lives.
func (p *probe) Intact(t *testing.T) {
	t.Helper()
	p.c.SumOK(t)
	if st := p.c.Inspect(t, "{{.State.Status}}"); st != "running" {
		t.Fatalf("docker inspect %s: %q, want running", p.c.Name, st)
	}
	if ps, err := workloads.Docker(t, "ps", "--format", "{{.Names}}"); err != nil || !strings.Contains(ps, p.c.Name) {
		t.Fatalf("docker ps does not list %s: %q %v", p.c.Name, ps, err)
	}
	if out, err := workloads.Docker(t, "exec", p.c.Name, "/bin/sh", "-c", "echo exec ok; ps 2>/dev/null | wc -l"); err != nil || !strings.Contains(out, "exec ok") {
		t.Fatalf("docker exec %s: %q %v", p.c.Name, out, err)
	}
}

func newBackend(t *testing.T) *docker.Backend {
	t.Helper()
	workloads.RequireDocker(t)
	b, err := docker.New(context.Background(), docker.Config{Containers: []string{workloads.DockerGlob()}, StagingDir: t.TempDir()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConformance(t *testing.T) {
	b := newBackend(t)
	t.Logf("dockerd %s", b.Version())
	conformance.Run(t, conformance.Harness{
		Backend: b,
		Start: func(t *testing.T) (string, conformance.Probe) {
			c := workloads.StartDockerContainer(t, 64)
			return c.Name, &probe{c: c}
		},
		DumpEnds: true,
	})
}

// A container with a restart policy would be started afresh by dockerd
// when its checkpoint ends it, and at boot: its policy is "no" while it is
// suspended, and back after the restore or the rollback.
func TestRestartPolicyOffWhileSuspended(t *testing.T) {
	b := newBackend(t)
	c := workloads.StartDockerContainer(t, 32, "--restart", "always")
	ctx := context.Background()
	w := hypervisors.Workload{ID: c.Name, Kind: docker.KindContainer, Backend: docker.Name}
	for _, rollback := range []bool{true, false} {
		r := testenv.Region(t, "", memregion.KindRaw, memregion.GiB)
		if err := b.Freeze(ctx, w); err != nil {
			t.Fatal(err)
		}
		recipe, err := b.Dump(ctx, w, hypervisors.RegionSink{Region: r, Prefix: "docker/" + c.Name})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second) // time for dockerd's restart manager to act, if it would
		if st := c.Inspect(t, "{{.State.Status}} {{.HostConfig.RestartPolicy.Name}}"); st != "exited no" {
			t.Errorf("after the checkpoint: %q, want the container exited with restart policy no", st)
		}
		before := c.Ticks(t)
		if rollback {
			if err := b.Thaw(ctx, w); err != nil {
				t.Fatal(err)
			}
		} else {
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
			if err := b.Restore(ctx, w, recipe, hypervisors.RegionSource{Region: r, Manifest: m, Prefix: "docker/" + c.Name}); err != nil {
				t.Fatal(err)
			}
		}
		if p := c.Inspect(t, "{{.HostConfig.RestartPolicy.Name}}"); p != "always" {
			t.Errorf("restart policy after the resume: %q, want always", p)
		}
		(&probe{c: c}).Intact(t)
		if after := c.Ticks(t); after <= before {
			t.Errorf("counter %d after the resume, %d before (a fresh start counts from 1)", after, before)
		}
	}
}

// A container started with --rm is removed when its checkpoint ends it,
// checkpoint included: preflight refuses it, saying why and what to do.
func TestPreflightRefusesAutoRemove(t *testing.T) {
	b := newBackend(t)
	ctx := context.Background()
	plain := workloads.StartDockerContainer(t, 16)
	if err := b.Preflight(ctx, hypervisors.Workload{ID: plain.Name, Kind: docker.KindContainer, Backend: docker.Name}); err != nil {
		t.Fatalf("preflight of a plain container: %v", err)
	}
	rm := workloads.StartDockerContainer(t, 16, "--rm")
	err := b.Preflight(ctx, hypervisors.Workload{ID: rm.Name, Kind: docker.KindContainer, Backend: docker.Name})
	if !errors.Is(err, hypervisors.ErrNotCheckpointable) || !strings.Contains(err.Error(), "--rm") {
		t.Fatalf("preflight of a --rm container: %v; want a refusal naming --rm", err)
	}
}
