package qemu_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/hypervisors/qemu"
	"github.com/ckpt-dev/ckpt/internal/testenv"
	"github.com/ckpt-dev/ckpt/internal/workloads"
	"github.com/ckpt-dev/ckpt/memregion"
)

// benchGuests are guest sizes in MiB; CKPT_BENCH_LARGE=1 adds 2 GiB. The
// guest's init fills half of it with pseudo-random data.
func benchGuests() []int {
	s := []int{512}
	if os.Getenv("CKPT_BENCH_LARGE") != "" {
		s = append(s, 2048)
	}
	return s
}

// benchModes compare QEMU's defaults, our stream settings, and mapped-ram
// with multifd channels (QEMU 10).
var benchModes = []struct {
	name, emulator string
	cfg            qemu.Config
	ramInPlace     bool // RAM a shared file in a preserved dir (cpr-reboot)
	preCopy        bool // PreDump before the freeze
}{
	{"qemu7/defaults", "qemu-system-x86_64", qemu.Config{MaxBandwidth: -1, MultifdChannels: -1}, false, false},
	{"qemu7/stream", "qemu-system-x86_64", qemu.Config{MultifdChannels: -1}, false, false},
	{"qemu10/stream", "qemu10-system-x86_64", qemu.Config{MultifdChannels: -1}, false, false},
	{"qemu10/multifd=1", "qemu10-system-x86_64", qemu.Config{MultifdChannels: 1}, false, false},
	{"qemu10/multifd=2", "qemu10-system-x86_64", qemu.Config{MultifdChannels: 2}, false, false},
	{"qemu10/multifd=4", "qemu10-system-x86_64", qemu.Config{MultifdChannels: 4}, false, false},
	{"qemu10/multifd=4+pre-copy", "qemu10-system-x86_64", qemu.Config{MultifdChannels: 4}, false, true},
	{"qemu10/cpr-reboot", "qemu10-system-x86_64", qemu.Config{}, true, false},
}

// BenchmarkSaveRestore suspends a TCG guest into a directory region on
// tmpfs and resumes it. Metrics: save and restore GB/s of guest RAM, QEMU's
// own total time and bytes transferred, memcpy GB/s of the same bytes in
// the same run, and vm-stopped-ms: how long the VM was stopped for its
// save (from the freeze; with a pre-copy, from QEMU's own stop at the end
// of its first pass: QEMU's downtime plus the freeze and dump after it).
func BenchmarkSaveRestore(b *testing.B) {
	testenv.RequireRoot(b)
	for _, mib := range benchGuests() {
		for _, mode := range benchModes {
			b.Run(fmt.Sprintf("guest=%dMiB/%s", mib, mode.name), func(b *testing.B) {
				emu := testenv.RequireTool(b, mode.emulator)
				sockDir := testenv.SocketDir(b) // b.TempDir() is too long for a unix socket path
				cfg := mode.cfg
				cfg.SocketDir, cfg.LogDir = sockDir, b.TempDir()
				var extra []string
				if mode.ramInPlace {
					ramDir, err := os.MkdirTemp("/dev/shm", "ckpt-ram-")
					if err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { os.RemoveAll(ramDir) })
					cfg.PreservedRAMDirs = []string{ramDir}
					extra = []string{"-object", fmt.Sprintf("memory-backend-file,id=ram0,size=%dM,mem-path=%s/vm.ram,share=on", mib, ramDir),
						"-machine", "memory-backend=ram0"}
				}
				be, err := qemu.New(cfg, nil)
				if err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				var save, restore, memcpyT, qemuT, stopped, pre time.Duration
				var ram, transferred int64
				for range b.N {
					b.StopTimer()
					g := workloads.StartGuestData(b, emu, sockDir, mib, mib/2, extra...)
					r := testenv.Region(b, "/dev/shm", memregion.KindDir, 0)
					ws, err := be.Discover(ctx)
					if err != nil || len(ws) != 1 {
						b.Fatalf("Discover: %v %v", ws, err)
					}
					w := ws[0]
					b.StartTimer()
					var preDone time.Time
					if mode.preCopy {
						start := time.Now()
						if err := be.PreDump(ctx, w, hypervisors.RegionSink{Region: r, Prefix: w.ID}); err != nil {
							b.Fatal(err)
						}
						preDone = time.Now()
						pre += preDone.Sub(start)
					}
					if err := be.Freeze(ctx, w); err != nil {
						b.Fatal(err)
					}
					start := time.Now()
					raw, err := be.Dump(ctx, w, hypervisors.RegionSink{Region: r, Prefix: w.ID})
					if err != nil {
						b.Fatal(err)
					}
					save += time.Since(start)
					var rec struct {
						Stats qemu.Migration `json:"stats"`
					}
					json.Unmarshal(raw, &rec)
					if mode.preCopy {
						stopped += time.Duration(rec.Stats.DowntimeMS)*time.Millisecond + time.Since(preDone)
					} else {
						stopped += time.Since(start)
					}
					qemuT += time.Duration(rec.Stats.TotalTimeMS) * time.Millisecond
					if rec.Stats.RAM != nil {
						transferred += rec.Stats.RAM.Transferred
					}
					m := &memregion.Manifest{Workloads: []memregion.WorkloadRecord{{ID: w.ID, Backend: qemu.Name, Restore: raw}}}
					for _, o := range r.Objects() {
						m.Workloads[0].Objects = append(m.Workloads[0].Objects, o.Name)
					}
					if err := r.Seal(ctx, m); err != nil {
						b.Fatal(err)
					}
					if err := be.Finish(ctx, w); err != nil {
						b.Fatal(err)
					}
					if m, err = r.Verify(ctx); err != nil {
						b.Fatal(err)
					}
					start = time.Now()
					if err := be.Restore(ctx, w, raw, hypervisors.RegionSource{Region: r, Manifest: m, Prefix: w.ID}); err != nil {
						b.Fatal(err)
					}
					restore += time.Since(start)
					b.StopTimer()
					ram += w.MemoryBytes
					memcpyT += testenv.MemcpyTime(w.MemoryBytes)
					if n := g.Ticks(); n == 0 {
						b.Fatal("guest does not tick")
					}
					workloads.KillBySocket(g.Socket)
				}
				gbps := func(d time.Duration) float64 { return float64(ram) / d.Seconds() / 1e9 }
				b.ReportMetric(gbps(save), "save-GB/s")
				b.ReportMetric(gbps(restore), "restore-GB/s")
				b.ReportMetric(gbps(memcpyT), "memcpy-GB/s")
				b.ReportMetric(save.Seconds()/float64(b.N)*1e3, "save-ms")
				b.ReportMetric(restore.Seconds()/float64(b.N)*1e3, "restore-ms")
				b.ReportMetric(qemuT.Seconds()/float64(b.N)*1e3, "qemu-total-ms")
				b.ReportMetric(float64(transferred)/float64(b.N)/(1<<20), "qemu-MiB")
				b.ReportMetric(stopped.Seconds()/float64(b.N)*1e3, "vm-stopped-ms")
				if mode.preCopy {
					b.ReportMetric(pre.Seconds()/float64(b.N)*1e3, "pre-copy-ms")
				}
			})
		}
	}
}
