package criu_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/hypervisors/criu"
	"github.com/ckpt-dev/ckpt/internal/testenv"
	"github.com/ckpt-dev/ckpt/internal/thp"
	"github.com/ckpt-dev/ckpt/internal/workloads"
	"github.com/ckpt-dev/ckpt/memregion"
)

// benchSizes are the containers' anonymous memory; CKPT_BENCH_LARGE=1
// adds 4 GiB (it needs about 14 GiB of free memory).
func benchSizes() []int {
	s := []int{256, 1024}
	if os.Getenv("CKPT_BENCH_LARGE") != "" {
		s = append(s, 4096)
	}
	return s
}

func startBenchContainer(b *testing.B, root string, mib int) (*workloads.Container, hypervisors.Workload) {
	b.Helper()
	c := workloads.StartContainer(b, root, workloads.Checkpointable, mib)
	return c, hypervisors.Workload{ID: c.ID, Kind: "container", Backend: criu.Name}
}

// BenchmarkDumpRestore suspends one container holding the given anonymous
// memory into a tmpfs-backed region and restores it. Metrics: dump and
// restore GB/s of image bytes, CRIU's own frozen/memdump/memwrite times
// and pages written, and memcpy GB/s of the same bytes in the same run.
//
// On a host whose transparent huge pages are in madvise mode, each size
// runs twice: thp=host restores with the host's mode, thp=always-while-
// restoring as resume-all --huge-pages does (restore.Options.HugePages).
func BenchmarkDumpRestore(b *testing.B) {
	modes := []string{"host"}
	if m, _ := thp.Mode(); m == "madvise" && os.Getuid() == 0 {
		modes = append(modes, "always-while-restoring")
	}
	for _, mib := range benchSizes() {
		for _, mode := range modes {
			b.Run(fmt.Sprintf("mem=%dMiB/thp=%s", mib, mode), func(b *testing.B) { benchDumpRestore(b, mib, mode) })
		}
	}
}

func benchDumpRestore(b *testing.B, mib int, mode string) {
	root := filepath.Join(b.TempDir(), "runc")
	be := newBackendTB(b, root)
	ctx := context.Background()
	var dumpT, restoreT, memcpyT time.Duration
	var bytes int64
	var st criuStats
	for range b.N {
		b.StopTimer()
		c, _ := startBenchContainer(b, root, mib)
		b.StartTimer()
		w, rec, src, took := suspended(b, be, c)
		dumpT += took
		bytes += src.Manifest.TotalBytes()
		st.add(rec)
		undo := func() error { return nil }
		if mode != "host" {
			u, _, err := thp.AlwaysWhile()
			if err != nil {
				b.Fatal(err)
			}
			undo = u
		}
		start := time.Now()
		err := be.Restore(ctx, w, rec, src)
		restoreT += time.Since(start)
		if uerr := undo(); err == nil {
			err = uerr
		}
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		st.addRestore(be, w.ID)
		memcpyT += testenv.MemcpyTime(src.Manifest.TotalBytes())
		b.StartTimer()
	}
	gbps := func(d time.Duration) float64 { return float64(bytes) / d.Seconds() / 1e9 }
	b.ReportMetric(gbps(dumpT), "dump-GB/s")
	b.ReportMetric(gbps(restoreT), "restore-GB/s")
	b.ReportMetric(gbps(memcpyT), "memcpy-GB/s")
	st.report(b)
}

// BenchmarkParallelDump dumps two containers one after the other and then
// both at once, in the same iteration, and reports the speed-up, with
// what says where the time goes: CRIU's own memdump (the parasite
// draining pages) and memwrite (writing them out) per dump, and the CPU
// time of runc and CRIU (getrusage of the waited-for children) over the
// wall time: near the machine's CPU count means the dumps are CPU-bound.
func BenchmarkParallelDump(b *testing.B) {
	const mib = 512
	root := filepath.Join(b.TempDir(), "runc")
	be := newBackendTB(b, root)
	ctx := context.Background()
	type account struct {
		wall, cpu time.Duration
		st        criuStats
	}
	var acc [2]account // sequential, parallel
	var memcpyT time.Duration
	var bytes int64
	for range b.N {
		for i, parallel := range []bool{false, true} {
			b.StopTimer()
			_, w1 := startBenchContainer(b, root, mib)
			_, w2 := startBenchContainer(b, root, mib)
			r := testenv.Region(b, "/dev/shm", memregion.KindDir, 0)
			for _, w := range []hypervisors.Workload{w1, w2} {
				if err := be.Freeze(ctx, w); err != nil {
					b.Fatal(err)
				}
			}
			cpu0 := childrenCPU()
			b.StartTimer()
			start := time.Now()
			var recs [2]json.RawMessage
			var errs [2]error
			dump := func(i int, w hypervisors.Workload) {
				recs[i], errs[i] = be.Dump(ctx, w, hypervisors.RegionSink{Region: r, Prefix: w.ID})
			}
			if parallel {
				var wg sync.WaitGroup
				for i, w := range []hypervisors.Workload{w1, w2} {
					wg.Add(1)
					go func() { defer wg.Done(); dump(i, w) }()
				}
				wg.Wait()
			} else {
				dump(0, w1)
				dump(1, w2)
			}
			acc[i].wall += time.Since(start)
			b.StopTimer()
			acc[i].cpu += childrenCPU() - cpu0
			for j, err := range errs {
				if err != nil {
					b.Fatal(err)
				}
				acc[i].st.add(recs[j])
			}
			if parallel {
				n, err := r.Written()
				if err != nil {
					b.Fatal(err)
				}
				bytes += n
				memcpyT += testenv.MemcpyTime(n)
			}
			b.StartTimer()
		}
	}
	seq, par := acc[0], acc[1]
	b.ReportMetric(seq.wall.Seconds()/float64(b.N), "sequential-s")
	b.ReportMetric(par.wall.Seconds()/float64(b.N), "parallel-s")
	b.ReportMetric(seq.wall.Seconds()/par.wall.Seconds(), "speedup")
	for _, a := range []struct {
		name string
		account
	}{{"seq", seq}, {"par", par}} {
		n := float64(a.st.n)
		b.ReportMetric(a.st.memdump/n*1e3, a.name+"-memdump-ms")
		b.ReportMetric(a.st.memwrite/n*1e3, a.name+"-memwrite-ms")
		b.ReportMetric(a.cpu.Seconds()/a.wall.Seconds(), a.name+"-cpus-busy")
	}
	b.ReportMetric(float64(bytes)/par.wall.Seconds()/1e9, "parallel-GB/s")
	b.ReportMetric(float64(bytes)/memcpyT.Seconds()/1e9, "memcpy-GB/s")
}

// childrenCPU is the user and system time of this process's waited-for
// descendants (runc, and the CRIU it waits for).
func childrenCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

type criuStats struct {
	n                         int
	frozen, memdump, memwrite float64 // seconds
	pages                     float64
	criuWall, store           float64
	// CRIU's restore statistics (Runtime.LastRestore).
	nr                                      int
	forking, restore, restored, restoreWall float64
}

func (s *criuStats) add(rec json.RawMessage) {
	var r struct {
		Stats *criu.DumpStats `json:"stats"`
	}
	if json.Unmarshal(rec, &r) != nil || r.Stats == nil {
		return
	}
	s.n++
	s.frozen += float64(r.Stats.FrozenMicros) / 1e6
	s.memdump += float64(r.Stats.MemdumpMicros) / 1e6
	s.memwrite += float64(r.Stats.MemwriteMicros) / 1e6
	s.pages += float64(r.Stats.PagesWritten)
	s.criuWall += float64(r.Stats.CRIUMicros) / 1e6
	s.store += float64(r.Stats.StoreMicros) / 1e6
}

// addRestore adds CRIU's account of the last restore of id.
func (s *criuStats) addRestore(be *criu.Runtime, id string) {
	rs := be.LastRestore(id)
	if rs == nil {
		return
	}
	s.nr++
	s.forking += float64(rs.ForkingMicros) / 1e6
	s.restore += float64(rs.RestoreMicros) / 1e6
	s.restored += float64(rs.PagesRestored)
	s.restoreWall += float64(rs.WallMicros) / 1e6
}

func (s *criuStats) report(b *testing.B) {
	if s.n == 0 {
		return
	}
	n := float64(s.n)
	b.ReportMetric(s.frozen/n*1e3, "criu-frozen-ms")
	b.ReportMetric(s.memdump/n*1e3, "criu-memdump-ms")
	b.ReportMetric(s.memwrite/n*1e3, "criu-memwrite-ms")
	b.ReportMetric(s.pages/n, "criu-pages")
	b.ReportMetric(s.criuWall/n*1e3, "runc-checkpoint-ms")
	b.ReportMetric(s.store/n*1e3, "store-ms")
	if s.nr > 0 {
		nr := float64(s.nr)
		b.ReportMetric(s.forking/nr*1e3, "criu-forking-ms")
		b.ReportMetric(s.restore/nr*1e3, "criu-restore-ms")
		b.ReportMetric(s.restored/nr, "criu-pages-restored")
		b.ReportMetric(s.restoreWall/nr*1e3, "runc-restore-ms")
	}
}
