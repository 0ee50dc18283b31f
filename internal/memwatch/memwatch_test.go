package memwatch

import (
	"sync"
	"testing"
	"time"
)

// TestWatch: memory taken during the watch counts, at its peak;
// what a RAM region grows by does not. Synthetic samples: the host's own
// MemAvailable moves with every other process (ckpt bench prints the real
// figure).
func TestWatch(t *testing.T) {
	const mib = 1 << 20
	type sample struct{ avail, region int64 }
	for _, tc := range []struct {
		name    string
		samples []sample // the first is the base
		want    int64
	}{
		{"staging 256 MiB, freed at the end", []sample{{4096, 0}, {3968, 0}, {3840, 0}, {4096, 0}}, 256 * mib},
		{"256 MiB into a RAM region", []sample{{4096, 100}, {3968, 228}, {3840, 356}, {3840, 356}}, 0},
		{"both: 64 MiB of buffers beside the region's 256", []sample{{4096, 0}, {3776, 256}, {3840, 256}}, 64 * mib},
		{"memory freed (a dump that ended its workload)", []sample{{4096, 0}, {4608, 0}}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			i := 0
			next := func() sample {
				mu.Lock()
				defer mu.Unlock()
				return tc.samples[min(i, len(tc.samples)-1)]
			}
			avail := func() int64 { return next().avail * mib }
			used := func() int64 {
				s := next()
				mu.Lock()
				i++
				mu.Unlock()
				return s.region * mib
			}
			stop := Start(avail, used, time.Millisecond)
			for {
				mu.Lock()
				done := i >= len(tc.samples)+1
				mu.Unlock()
				if done {
					break
				}
				time.Sleep(time.Millisecond)
			}
			if got := stop().Peak; got != tc.want {
				t.Errorf("peak extra RAM = %d MiB; want %d MiB", got/mib, tc.want/mib)
			}
		})
	}
}
