package libvirt_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/hypervisors/conformance"
	"github.com/ckpt-dev/ckpt/hypervisors/libvirt"
	"github.com/ckpt-dev/ckpt/internal/testenv"
	"github.com/ckpt-dev/ckpt/internal/workloads"
	"github.com/ckpt-dev/ckpt/memregion"
)

const (
	domMemMiB  = 384
	domDataMiB = 128
)

// probe implements conformance.Probe for a libvirt domain.
type probe struct {
	t *testing.T
	g *workloads.Guest
}

func (p *probe) Counter(t *testing.T) int64 { return p.g.Ticks() }

// Intact waits for the guest's next checksum of its memory, and checks
// that libvirt shows the domain running, under its name.
func (p *probe) Intact(t *testing.T) {
	t.Helper()
	fi, err := os.Stat(p.g.Console)
	if err != nil {
		t.Fatal(err)
	}
	from := fi.Size()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(p.g.Console)
		if int64(len(b)) > from {
			fresh := string(b[from:])
			if strings.Contains(fresh, "sum BAD") {
				t.Fatalf("guest memory changed: %s", workloads.TailLines(fresh, 5))
			}
			if strings.Contains(fresh, "sum OK") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest printed no checksum within 30s; console:\n%s", workloads.TailLines(string(b), 10))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if st := workloads.DomainState(t, p.g.ID); st != "running" {
		t.Fatalf("virsh domstate %s = %q, want running", p.g.ID, st)
	}
	list, err := workloads.Virsh(t, "list", "--name")
	if err != nil || !strings.Contains(list, p.g.ID) {
		t.Fatalf("virsh list does not show %s: %q %v", p.g.ID, list, err)
	}
}

func newBackend(t *testing.T) *libvirt.Backend {
	t.Helper()
	workloads.RequireLibvirt(t)
	b, err := libvirt.New(context.Background(), libvirt.Config{Domains: []string{"ckpt-dom-*"}, StagingDir: t.TempDir()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestConformance(t *testing.T) {
	b := newBackend(t)
	t.Logf("libvirt %s", b.Version())
	conformance.Run(t, conformance.Harness{
		Backend: b,
		Start: func(t *testing.T) (string, conformance.Probe) {
			g := workloads.StartDomain(t, domMemMiB, domDataMiB, false)
			return g.ID, &probe{t: t, g: g}
		},
		DumpEnds: true,
	})
}

// An autostart domain would be started afresh by libvirtd at boot, before
// ckpt restores it: its autostart is off while it is suspended, and back
// on after the restore; a rollback puts it back too.
func TestAutostartOffWhileSuspended(t *testing.T) {
	b := newBackend(t)
	g := workloads.StartDomain(t, 256, 32, true)
	autostart := func() string {
		out, err := workloads.Virsh(t, "dominfo", g.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(l, "Autostart:"); ok {
				return strings.TrimSpace(v)
			}
		}
		t.Fatalf("no Autostart in dominfo: %s", out)
		return ""
	}
	ctx := context.Background()
	w := hypervisors.Workload{ID: g.ID, Kind: libvirt.KindVM, Backend: libvirt.Name}
	for _, rollback := range []bool{true, false} {
		r := testenv.Region(t, "", memregion.KindRaw, memregion.GiB)
		if err := b.Freeze(ctx, w); err != nil {
			t.Fatal(err)
		}
		recipe, err := b.Dump(ctx, w, hypervisors.RegionSink{Region: r, Prefix: "libvirt/" + g.ID})
		if err != nil {
			t.Fatal(err)
		}
		if st := workloads.DomainState(t, g.ID); st != "shut off" {
			t.Errorf("after the save, domstate = %q, want shut off (the domain stays defined)", st)
		}
		if a := autostart(); a != "disable" {
			t.Errorf("while suspended, autostart = %q, want disable", a)
		}
		before := g.Ticks()
		if rollback {
			if err := b.Thaw(ctx, w); err != nil {
				t.Fatal(err)
			}
		} else {
			m := &memregion.Manifest{Workloads: []memregion.WorkloadRecord{{ID: g.ID, Kind: w.Kind, Backend: w.Backend, Objects: objectNames(r), Restore: recipe}}}
			if err := r.Seal(ctx, m); err != nil {
				t.Fatal(err)
			}
			m, err = r.Verify(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Finish(ctx, w); err != nil {
				t.Fatal(err)
			}
			if err := b.Restore(ctx, w, recipe, hypervisors.RegionSource{Region: r, Manifest: m, Prefix: "libvirt/" + g.ID}); err != nil {
				t.Fatal(err)
			}
		}
		if a := autostart(); a != "enable" {
			t.Errorf("after the %s, autostart = %q, want enable", map[bool]string{true: "rollback", false: "restore"}[rollback], a)
		}
		(&probe{t: t, g: g}).Intact(t)
		if after := g.Ticks(); after <= before {
			t.Errorf("counter %d after the resume, %d before", after, before)
		}
	}
}

func objectNames(r *memregion.Region) []string {
	var names []string
	for _, o := range r.Objects() {
		names = append(names, o.Name)
	}
	return names
}
