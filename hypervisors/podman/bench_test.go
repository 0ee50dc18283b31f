package podman_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/hypervisors/criu"
	"github.com/ckpt-dev/ckpt/hypervisors/podman"
	"github.com/ckpt-dev/ckpt/internal/testenv"
	"github.com/ckpt-dev/ckpt/internal/workloads"
	"github.com/ckpt-dev/ckpt/memregion"
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
	const mib = 256
	workloads.RequirePodman(b)
	for _, mode := range []string{"podman", "runc"} {
		b.Run(fmt.Sprintf("mem=%dMiB/%s", mib, mode), func(b *testing.B) {
			ctx := context.Background()
			var be hypervisors.Backend
			root := filepath.Join(b.TempDir(), "runc")
			if mode == "podman" {
				p, err := podman.New(ctx, podman.Config{Containers: []string{workloads.PodmanGlob()}}, nil)
				if err != nil {
					b.Fatal(err)
				}
				be = p
			} else {
				r, err := criu.New(ctx, criu.Config{Runc: testenv.RequireTool(b, "runc"), CRIU: testenv.RequireTool(b, "criu"),
					RuncRoot: root, WorkDir: b.TempDir(), LogDir: b.TempDir()}, nil)
				if err != nil {
					b.Fatal(err)
				}
				be = r
			}
			var dumpT, restoreT, memcpyT time.Duration
			var bytes int64
			for range b.N {
				b.StopTimer()
				w := hypervisors.Workload{Backend: be.Name(), Kind: "container"}
				if mode == "podman" {
					w.ID = workloads.StartPodmanContainer(b, mib).Name
				} else {
					w.ID = workloads.StartContainer(b, root, workloads.Checkpointable, mib).ID
				}
				r := testenv.Region(b, "/dev/shm", memregion.KindDir, 0)
				b.StartTimer()
				if err := be.Freeze(ctx, w); err != nil {
					b.Fatal(err)
				}
				start := time.Now()
				raw, err := be.Dump(ctx, w, hypervisors.RegionSink{Region: r, Prefix: w.ID})
				if err != nil {
					be.Thaw(ctx, w)
					b.Fatal(err)
				}
				dumpT += time.Since(start)
				b.StopTimer()
				var names []string
				for _, o := range r.Objects() {
					names = append(names, o.Name)
					bytes += o.Size
				}
				m := &memregion.Manifest{Workloads: []memregion.WorkloadRecord{{ID: w.ID, Backend: be.Name(), Restore: json.RawMessage(raw), Objects: names}}}
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
				restoreT += time.Since(start)
				b.StopTimer()
				memcpyT += testenv.MemcpyTime(int64(mib) << 20)
			}
			gbps := func(d time.Duration) float64 { return float64(bytes) / d.Seconds() / 1e9 }
			b.ReportMetric(gbps(dumpT), "dump-GB/s")
			b.ReportMetric(gbps(restoreT), "restore-GB/s")
			b.ReportMetric(float64(int64(b.N)*mib<<20)/memcpyT.Seconds()/1e9, "memcpy-GB/s")
			b.ReportMetric(dumpT.Seconds()/float64(b.N)*1e3, "dump-ms")
			b.ReportMetric(restoreT.Seconds()/float64(b.N)*1e3, "restore-ms")
		})
	}
}
