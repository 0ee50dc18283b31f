package memregion

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// benchObject is what each writer writes per iteration.
const benchObject = 256 << 20

// benchDir is a tmpfs: the benchmarks measure the region code and the
// copy into memory, not a disk. CKPT_BENCH_DIR picks another one (e.g. a
// tmpfs mounted with huge=always).
func benchDir(b *testing.B) string {
	b.Helper()
	base := os.Getenv("CKPT_BENCH_DIR")
	if base == "" {
		base = "/dev/shm"
	}
	d, err := os.MkdirTemp(base, "ckpt-bench-")
	if err != nil {
		b.Skipf("no /dev/shm tmpfs: %v", err)
	}
	b.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// touched returns n writers' buffers with every page already faulted in.
func touched(writers, n int) [][]byte {
	bufs := make([][]byte, writers)
	for i := range bufs {
		bufs[i] = randBytes(uint64(i), n)
	}
	return bufs
}

// parallel runs fn(i) on n goroutines and returns the wall time.
func parallel(n int, fn func(i int) error) (time.Duration, error) {
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = fn(i) }()
	}
	wg.Wait()
	d := time.Since(start)
	for _, err := range errs {
		if err != nil {
			return d, err
		}
	}
	return d, nil
}

// BenchmarkRegionWrite writes one benchObject per writer into a region on
// tmpfs and seals it, and in the same iteration copies the same bytes
// with plain memcpy between pre-touched buffers. Metrics: GB/s (ours),
// memcpy-GB/s, and ours/memcpy. "warm" reuses a region whose pages are
// already allocated; "cold" formats a fresh one each iteration (the first
// touch of tmpfs pages dominates, as DESIGN.md measured).
func BenchmarkRegionWrite(b *testing.B) {
	for _, kind := range []string{KindRaw, KindDir} {
		for _, writers := range []int{1, 2, 4} {
			for _, temp := range []string{"warm", "cold"} {
				b.Run(fmt.Sprintf("%s/writers=%d/%s", kind, writers, temp), func(b *testing.B) {
					benchRegionWrite(b, kind, writers, temp == "cold")
				})
			}
		}
	}
}

func benchRegionWrite(b *testing.B, kind string, writers int, cold bool) {
	src := touched(writers, benchObject)
	dst := touched(writers, benchObject)
	total := int64(writers) * benchObject
	size := total + 64*MiB
	dir := benchDir(b)
	path := filepath.Join(dir, "region")
	format := func() *Region {
		os.RemoveAll(path)
		if err := Format(path, FormatOptions{Kind: kind, Size: size}); err != nil {
			b.Fatal(err)
		}
		r, err := Open(path, Options{})
		if err != nil {
			b.Fatal(err)
		}
		return r
	}
	r := format()
	if !cold { // fault every page of the region in once
		if _, err := WriteSelftest(context.Background(), r, SelftestSpec{Objects: writers, Size: benchObject}); err != nil {
			b.Fatal(err)
		}
		if err := r.Release(); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(total)
	b.ResetTimer()
	var ours, memcpy time.Duration
	for i := range b.N {
		d, _ := parallel(writers, func(w int) error { copy(dst[w], src[w]); return nil })
		memcpy += d
		if cold && i > 0 {
			r.Close()
			r = format()
		}
		d, err := parallel(writers, func(w int) error {
			ow, err := r.Create(fmt.Sprintf("w%d", w), benchObject)
			if err != nil {
				return err
			}
			for p := src[w]; len(p) > 0; p = p[MiB:] {
				if _, err := ow.Write(p[:MiB]); err != nil {
					return err
				}
			}
			return ow.Close()
		})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := r.Seal(context.Background(), &Manifest{}); err != nil {
			b.Fatal(err)
		}
		ours += d + time.Since(start)
		b.StopTimer()
		if err := r.Release(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	r.Close()
	gbps := func(d time.Duration) float64 { return float64(total) * float64(b.N) / d.Seconds() / 1e9 }
	b.ReportMetric(gbps(ours), "GB/s")
	b.ReportMetric(gbps(memcpy), "memcpy-GB/s")
	b.ReportMetric(memcpy.Seconds()/ours.Seconds(), "x-memcpy")
}
