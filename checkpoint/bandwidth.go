package checkpoint

import (
	"runtime"
	"sync"
	"time"
)

// Bandwidth is this machine's memory copy bandwidth with n copiers.
type Bandwidth struct {
	Copiers int     `json:"copiers"`
	GBps    float64 `json:"gbps"`
}

// MeasureConcurrency copies memory with 1, 2, … up to max goroutines
// (32 MiB each, pre-touched) and returns the smallest count whose
// aggregate bandwidth is within 10 % of the best, with every measurement.
// Dumping is memory copying: more dumps at once than the memory bus
// serves only add frozen time to each. It takes some tens of ms.
func MeasureConcurrency(max int) (int, []Bandwidth) {
	if max < 1 {
		max = runtime.NumCPU()
	}
	const size = 32 << 20
	bufs := make([][2][]byte, max)
	for i := range bufs {
		bufs[i] = [2][]byte{make([]byte, size), make([]byte, size)}
		for j := 0; j < size; j += 4096 {
			bufs[i][0][j], bufs[i][1][j] = 1, 1
		}
	}
	var ms []Bandwidth
	best := 0.0
	for n := 1; n <= max; n++ {
		var wg sync.WaitGroup
		start := time.Now()
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 2 {
					copy(bufs[i][1], bufs[i][0])
				}
			}()
		}
		wg.Wait()
		gbps := float64(n*2*size) / time.Since(start).Seconds() / 1e9
		ms = append(ms, Bandwidth{Copiers: n, GBps: gbps})
		best = maxf(best, gbps)
	}
	for _, m := range ms {
		if m.GBps >= 0.9*best {
			return m.Copiers, ms
		}
	}
	return 1, ms
}

func maxf(a, b float64) float64 {
	if a > b {
		return a
	}
	return b
}
