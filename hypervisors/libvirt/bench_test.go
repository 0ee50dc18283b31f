package libvirt_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/hypervisors/libvirt"
	"github.com/ckpt-dev/ckpt/hypervisors/qemu"
	"github.com/ckpt-dev/ckpt/internal/testenv"
	"github.com/ckpt-dev/ckpt/internal/workloads"
	"github.com/ckpt-dev/ckpt/memregion"
)

// BenchmarkSaveRestore measures, side by side in one run on the same guest
// size, what the choice of the libvirt backend's path rests on:
//   - libvirt: virDomainSaveFlags into a directory region (the save file
//     written in place) and virDomainRestoreFlags from it;
//   - libvirt-raw: the same into a raw region (staged on tmpfs, copied);
//   - qmp: the qemu backend on a bare QEMU of the same size (what libvirt's
//     QMP passthrough would reach at best: libvirt cannot relaunch a domain
//     with -incoming for a restore it did not start);
//   - memcpy of the same bytes.
//
// libvirt-job-ms is libvirt's own save job (QEMU's migration through
// libvirt_iohelper); the rest of save-ms is libvirtd ending QEMU, which
// waits for the process to be reaped (on this test machine its init reaps
// orphans only every ~2 s).
func BenchmarkSaveRestore(b *testing.B) {
	const mib = 512
	workloads.RequireLibvirt(b)
	for _, mode := range []string{"libvirt", "libvirt-raw", "qmp"} {
		b.Run(fmt.Sprintf("guest=%dMiB/%s", mib, mode), func(b *testing.B) {
			ctx := context.Background()
			var be hypervisors.Backend
			var sockDir string
			if mode == "qmp" {
				sockDir = testenv.SocketDir(b)
				q, err := qemu.New(qemu.Config{SocketDir: sockDir, LogDir: b.TempDir(), MultifdChannels: -1}, nil)
				if err != nil {
					b.Fatal(err)
				}
				be = q
			} else {
				l, err := libvirt.New(ctx, libvirt.Config{Domains: []string{workloads.DomainGlob()}, StagingDir: b.TempDir()}, nil)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { l.Close() })
				be = l
			}
			var save, restore, memcpyT, job time.Duration
			var ram int64
			for range b.N {
				b.StopTimer()
				var g *workloads.Guest
				if mode == "qmp" {
					g = workloads.StartGuestData(b, testenv.RequireTool(b, "qemu-system-x86_64"), sockDir, mib, mib/2)
				} else {
					g = workloads.StartDomain(b, mib, mib/2, false)
				}
				kind := memregion.KindDir
				if mode == "libvirt-raw" {
					kind = memregion.KindRaw
				}
				r := testenv.Region(b, "/dev/shm", kind, 2*memregion.GiB)
				ws, err := be.Discover(ctx)
				i := slices.IndexFunc(ws, func(w hypervisors.Workload) bool { return w.ID == g.ID })
				if err != nil || i < 0 {
					b.Fatalf("Discover: %v %v; no %s", ws, err, g.ID)
				}
				w := ws[i]
				b.StartTimer()
				if err := be.Freeze(ctx, w); err != nil {
					b.Fatal(err)
				}
				start := time.Now()
				raw, err := be.Dump(ctx, w, hypervisors.RegionSink{Region: r, Prefix: w.ID})
				if err != nil {
					b.Fatal(err)
				}
				save += time.Since(start)
				b.StopTimer()
				var rec struct {
					SaveMS int64 `json:"save_ms"`
				}
				json.Unmarshal(raw, &rec)
				job += time.Duration(rec.SaveMS) * time.Millisecond
				m := &memregion.Manifest{Workloads: []memregion.WorkloadRecord{{ID: w.ID, Backend: be.Name(), Restore: json.RawMessage(raw), Objects: objectNames(r)}}}
				if err := r.Seal(ctx, m); err != nil {
					b.Fatal(err)
				}
				if err := be.Finish(ctx, w); err != nil {
					b.Fatal(err)
				}
				if m, err = r.Verify(ctx); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				start = time.Now()
				if err := be.Restore(ctx, w, raw, hypervisors.RegionSource{Region: r, Manifest: m, Prefix: w.ID}); err != nil {
					b.Fatal(err)
				}
				restore += time.Since(start)
				b.StopTimer()
				ram += w.MemoryBytes
				memcpyT += testenv.MemcpyTime(w.MemoryBytes)
				if before := g.Ticks(); !ticksAfter(g, before, time.Minute) {
					b.Fatalf("guest does not tick after the restore (at %d)", before)
				}
				if mode == "qmp" {
					workloads.KillBySocket(g.Socket)
				} else {
					workloads.Virsh(b, "destroy", g.ID)
				}
			}
			gbps := func(d time.Duration) float64 { return float64(ram) / d.Seconds() / 1e9 }
			b.ReportMetric(gbps(save), "save-GB/s")
			b.ReportMetric(gbps(restore), "restore-GB/s")
			b.ReportMetric(gbps(memcpyT), "memcpy-GB/s")
			b.ReportMetric(save.Seconds()/float64(b.N)*1e3, "save-ms")
			b.ReportMetric(restore.Seconds()/float64(b.N)*1e3, "restore-ms")
			if mode != "qmp" {
				// libvirt's own save job (QEMU's migration); the rest of
				// save-ms is libvirtd waiting for QEMU's exit.
				b.ReportMetric(job.Seconds()/float64(b.N)*1e3, "libvirt-job-ms")
			}
		})
	}
}

func ticksAfter(g *workloads.Guest, n int64, within time.Duration) bool {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if g.Ticks() > n {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}
