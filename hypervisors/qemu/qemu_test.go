package qemu_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/hypervisors/conformance"
	"github.com/ckpt-dev/ckpt/hypervisors/qemu"
	"github.com/ckpt-dev/ckpt/internal/testenv"
	"github.com/ckpt-dev/ckpt/internal/workloads"
	"github.com/ckpt-dev/ckpt/memregion"
)

// probe implements conformance.Probe for a guest.
type probe struct {
	g *workloads.Guest
	b *qemu.Backend
}

func (p *probe) Counter(t *testing.T) int64 { return p.g.Ticks() }

// Intact waits for the guest's next checksum of its memory, and checks
// that the VM is back behind its QMP socket and running.
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
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, err := p.b.Discover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range ws {
		if w.ID == p.g.ID {
			if w.Attrs["status"] != "running" {
				t.Fatalf("VM %s is %s, want running", w.ID, w.Attrs["status"])
			}
			return
		}
	}
	t.Fatalf("VM %s is not behind its QMP socket %s", p.g.ID, p.g.Socket)
}

// emulators are the QEMUs hack/setup.sh installs: bookworm's 7.2 and
// backports' 10.0 (wrapper).
func emulators(t *testing.T) map[string]string {
	return map[string]string{
		"qemu7":  testenv.RequireTool(t, "qemu-system-x86_64"),
		"qemu10": testenv.RequireTool(t, "qemu10-system-x86_64"),
	}
}

func newBackend(t *testing.T, sockDir string) *qemu.Backend {
	t.Helper()
	b, err := qemu.New(qemu.Config{SocketDir: sockDir, LogDir: t.TempDir()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConformance(t *testing.T) {
	testenv.RequireRoot(t)
	for name, emu := range emulators(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sockDir := t.TempDir()
			b := newBackend(t, sockDir)
			conformance.Run(t, conformance.Harness{
				Backend: b,
				Timeout: 3 * time.Minute,
				Start: func(t *testing.T) (string, conformance.Probe) {
					g := workloads.StartGuest(t, emu, sockDir, 512)
					return g.ID, &probe{g: g, b: b}
				},
			})
		})
	}
}

// TestQMPErrorIsTyped: a QMP failure carries QEMU's class and text.
func TestQMPErrorIsTyped(t *testing.T) {
	testenv.RequireRoot(t)
	sockDir := t.TempDir()
	g := workloads.StartGuest(t, emulators(t)["qemu7"], sockDir, 256)
	mon, err := qemu.Dial(context.Background(), g.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	err = mon.Execute(context.Background(), "no-such-command", nil, nil)
	var qe *qemu.QMPError
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("err = %v; want a QMPError of class CommandNotFound", err)
	}
	if mon.PID <= 0 || !strings.Contains(readFile(fmt.Sprintf("/proc/%d/cmdline", mon.PID)), g.Socket) {
		t.Fatalf("Monitor.PID = %d is not the QEMU serving %s", mon.PID, g.Socket)
	}
	_ = hypervisors.ErrNotFound
}

func readFile(p string) string { b, _ := os.ReadFile(p); return string(b) }

// TestRAMStaysInPlace: a VM whose RAM is a shared file in a preserved
// directory is saved in cpr-reboot mode: the region gets only device
// state, and the restored guest finds its memory intact.
func TestRAMStaysInPlace(t *testing.T) {
	testenv.RequireRoot(t)
	emu := emulators(t)["qemu10"]
	sockDir, ramDir := t.TempDir(), t.TempDir()
	b, err := qemu.New(qemu.Config{SocketDir: sockDir, LogDir: t.TempDir(), PreservedRAMDirs: []string{ramDir}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	plain := workloads.StartGuest(t, emu, sockDir, 256)
	id := fmt.Sprintf("ckpt-vm-%d-%d", os.Getpid(), workloads.Seq.Load()+1)
	g := workloads.StartGuestData(t, emu, sockDir, 512, workloads.GuestDataMiB,
		"-object", "memory-backend-file,id=ram0,size=512M,mem-path="+filepath.Join(ramDir, id+".ram")+",share=on",
		"-machine", "memory-backend=ram0")
	ctx := context.Background()
	err = b.RAMInPlace(ctx, hypervisors.Workload{ID: plain.ID})
	if !errors.Is(err, qemu.ErrRAMNotPreserved) || !strings.Contains(err.Error(), "memory-backend-file") {
		t.Fatalf("RAMInPlace(plain VM) = %v; want ErrRAMNotPreserved saying how to qualify", err)
	}
	w := hypervisors.Workload{ID: g.ID, MemoryBytes: 512 << 20}
	if err := b.RAMInPlace(ctx, w); err != nil {
		t.Fatalf("RAMInPlace: %v", err)
	}
	// The plan's estimate: device state for the VM whose RAM stays, its
	// RAM for the other.
	if n, err := b.EstimateSize(ctx, w); err != nil || n > 32<<20 {
		t.Fatalf("EstimateSize(RAM in place) = %d, %v", n, err)
	}
	if n, err := b.EstimateSize(ctx, hypervisors.Workload{ID: plain.ID, MemoryBytes: 256 << 20}); err != nil || n != 256<<20 {
		t.Fatalf("EstimateSize(plain VM) = %d, %v", n, err)
	}
	p := &probe{g: g, b: b}
	r := testenv.Region(t, "", memregion.KindDir, 0)
	if err := b.Freeze(ctx, w); err != nil {
		t.Fatal(err)
	}
	frozenAt := g.Ticks()
	raw, err := b.Dump(ctx, w, hypervisors.RegionSink{Region: r, Prefix: "vm"})
	if err != nil {
		b.Thaw(ctx, w)
		t.Fatal(err)
	}
	var rec struct {
		CPR *struct {
			RAMFile string `json:"ram_file"`
		} `json:"cpr_reboot"`
	}
	json.Unmarshal(raw, &rec)
	if rec.CPR == nil {
		t.Fatalf("recipe %s: RAM was not left in place", raw)
	}
	var stored int64
	for _, o := range r.Objects() {
		stored += o.Size
	}
	if stored > 32<<20 {
		t.Fatalf("%d bytes stored for a 512 MiB guest whose RAM stays in place", stored)
	}
	m := &memregion.Manifest{Workloads: []memregion.WorkloadRecord{{ID: w.ID, Backend: qemu.Name, Restore: raw, Objects: []string{"vm/state"}}}}
	if err := r.Seal(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := b.Finish(ctx, w); err != nil {
		t.Fatal(err)
	}
	if m, err = r.Verify(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Restore(ctx, w, raw, hypervisors.RegionSource{Region: r, Manifest: m, Prefix: "vm"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for g.Ticks() <= frozenAt && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if g.Ticks() <= frozenAt {
		t.Fatal("guest does not tick after the restore")
	}
	p.Intact(t)
	t.Logf("stored %d bytes of device state for a 512 MiB guest", stored)
}

// TestPreflightReportsMigrationBlocker: a device that blocks migration
// (ivshmem in peer mode) is reported with QEMU's reason, and the VM is
// left alone.
func TestPreflightReportsMigrationBlocker(t *testing.T) {
	testenv.RequireRoot(t)
	sockDir := t.TempDir()
	shm := filepath.Join(t.TempDir(), "ivshmem")
	g := workloads.StartGuestData(t, emulators(t)["qemu7"], sockDir, 256, 16,
		"-object", "memory-backend-file,id=shm0,size=1M,mem-path="+shm+",share=on",
		"-device", "ivshmem-plain,memdev=shm0")
	b := newBackend(t, sockDir)
	err := b.Preflight(context.Background(), hypervisors.Workload{ID: g.ID})
	if !errors.Is(err, hypervisors.ErrNotCheckpointable) || !strings.Contains(err.Error(), "ivshmem") {
		t.Fatalf("Preflight = %v; want ErrNotCheckpointable naming ivshmem", err)
	}
	if err := b.Preflight(context.Background(), hypervisors.Workload{ID: workloads.StartGuest(t, emulators(t)["qemu7"], sockDir, 256).ID}); err != nil {
		t.Fatalf("Preflight of a plain VM: %v", err)
	}
}

// TestFailedDumpLeavesVMRunning: a region too small for the VM fails the
// dump with the region's error; after the rollback's Thaw the guest runs
// on with its memory intact.
func TestFailedDumpLeavesVMRunning(t *testing.T) {
	testenv.RequireRoot(t)
	sockDir := t.TempDir()
	g := workloads.StartGuest(t, emulators(t)["qemu7"], sockDir, 512)
	b := newBackend(t, sockDir)
	path := filepath.Join(t.TempDir(), "small")
	if err := memregion.Format(path, memregion.FormatOptions{Kind: memregion.KindRaw, Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	r, err := memregion.Open(path, memregion.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx := context.Background()
	w := hypervisors.Workload{ID: g.ID}
	if err := b.Freeze(ctx, w); err != nil {
		t.Fatal(err)
	}
	frozenAt := g.Ticks()
	_, err = b.Dump(ctx, w, hypervisors.RegionSink{Region: r, Prefix: "vm"})
	if !errors.Is(err, memregion.ErrNoSpace) {
		t.Fatalf("Dump into 64 MiB = %v; want ErrNoSpace", err)
	}
	if err := b.Thaw(ctx, w); err != nil {
		t.Fatal(err)
	}
	r.Discard()
	deadline := time.Now().Add(10 * time.Second)
	for g.Ticks() <= frozenAt && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if g.Ticks() <= frozenAt {
		t.Fatal("guest does not run after the failed dump and thaw")
	}
	(&probe{g: g, b: b}).Intact(t)
}

// TestCorruptStateRefused: a state object with one flipped byte is
// refused at restore even without a prior Verify; the relaunched QEMU is
// ended, the VM does not run from bad state, and the region keeps
// everything for a retry.
func TestCorruptStateRefused(t *testing.T) {
	testenv.RequireRoot(t)
	sockDir := t.TempDir()
	g := workloads.StartGuest(t, emulators(t)["qemu7"], sockDir, 256)
	b := newBackend(t, sockDir)
	r := testenv.Region(t, "", memregion.KindDir, 0)
	ctx := context.Background()
	w := hypervisors.Workload{ID: g.ID}
	if err := b.Freeze(ctx, w); err != nil {
		t.Fatal(err)
	}
	raw, err := b.Dump(ctx, w, hypervisors.RegionSink{Region: r, Prefix: "vm"})
	if err != nil {
		t.Fatal(err)
	}
	m := &memregion.Manifest{Workloads: []memregion.WorkloadRecord{{ID: w.ID, Backend: qemu.Name, Restore: raw, Objects: []string{"vm/state"}}}}
	if err := r.Seal(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := b.Finish(ctx, w); err != nil {
		t.Fatal(err)
	}
	var state string
	filepath.Walk(r.Path(), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && fi.Name() == "state" {
			state = p
		}
		return nil
	})
	f, err := os.OpenFile(state, os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("state object file: %v", err)
	}
	one := make([]byte, 1)
	f.ReadAt(one, 4096)
	one[0] ^= 0x40
	f.WriteAt(one, 4096)
	f.Close()
	m, err = r.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	err = b.Restore(ctx, w, raw, hypervisors.RegionSource{Region: r, Manifest: m, Prefix: "vm"})
	if err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("Restore of a corrupt state = %v; want a checksum error", err)
	}
	time.Sleep(500 * time.Millisecond)
	if ws, _ := b.Discover(ctx); len(ws) != 0 {
		t.Fatalf("a VM runs from corrupt state: %+v", ws)
	}
	if sealed, err := r.Sealed(); err != nil || !sealed {
		t.Fatalf("region after a refused restore: sealed=%v, %v", sealed, err)
	}
}

// TestCrashedDumpSettingsPutBack: the migration settings a dump changes
// (bandwidth limit, multifd) are recorded in the workload the plan saw,
// which the journal keeps; the Thaw of a recover, by a new backend after
// the ckpt that changed them died, puts them back and continues the VM.
func TestCrashedDumpSettingsPutBack(t *testing.T) {
	testenv.RequireRoot(t)
	sockDir := t.TempDir()
	g := workloads.StartGuest(t, emulators(t)["qemu10"], sockDir, 256)
	ctx := context.Background()
	b := newBackend(t, sockDir)
	ws, err := b.Discover(ctx)
	if err != nil || len(ws) != 1 {
		t.Fatalf("Discover = %v, %v", ws, err)
	}
	w := ws[0] // as journalled
	if err := b.Freeze(ctx, w); err != nil {
		t.Fatal(err)
	}
	frozenAt := g.Ticks()
	b.Close() // ckpt dies mid-dump, after changing the settings:
	m, err := qemu.Dial(ctx, g.Socket)
	if err != nil {
		t.Fatal(err)
	}
	var before map[string]json.RawMessage
	if err := m.Execute(ctx, "query-migrate-parameters", nil, &before); err != nil {
		t.Fatal(err)
	}
	if err := m.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": 12345, "multifd-channels": 7}, nil); err != nil {
		t.Fatal(err)
	}
	caps := map[string]any{"capabilities": []map[string]any{{"capability": "multifd", "state": true}}}
	if err := m.Execute(ctx, "migrate-set-capabilities", caps, nil); err != nil {
		t.Fatal(err)
	}
	m.Close()
	b2 := newBackend(t, sockDir)
	if err := b2.Thaw(ctx, w); err != nil {
		t.Fatalf("Thaw of the recover: %v", err)
	}
	b2.Close()
	m, err = qemu.Dial(ctx, g.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var after map[string]json.RawMessage
	if err := m.Execute(ctx, "query-migrate-parameters", nil, &after); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"max-bandwidth", "multifd-channels"} {
		if string(after[k]) != string(before[k]) {
			t.Errorf("%s is %s after the recover, was %s", k, after[k], before[k])
		}
	}
	var capList []struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	if err := m.Execute(ctx, "query-migrate-capabilities", nil, &capList); err != nil {
		t.Fatal(err)
	}
	for _, c := range capList {
		if c.Capability == "multifd" && c.State {
			t.Error("multifd is still on after the recover")
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for g.Ticks() <= frozenAt && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if g.Ticks() <= frozenAt {
		t.Fatal("the VM does not run after the recover")
	}
}
