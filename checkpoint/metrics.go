package checkpoint

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ckpt-dev/ckpt/internal/atomicfile"
)

// DefaultMetricsDir is where Debian's prometheus-node-exporter reads
// textfile metrics.
const DefaultMetricsDir = "/var/lib/prometheus/node-exporter"

// Metrics is a set of samples in the Prometheus text format.
type Metrics struct{ lines []string }

// Gauge adds a sample with optional label pairs ("workload", "criu/web").
func (m *Metrics) Gauge(name, help string, v float64, labels ...string) {
	head := "# HELP " + name + " " + help
	if !contains(m.lines, head) {
		m.lines = append(m.lines, head, "# TYPE "+name+" gauge")
	}
	var ls []string
	for i := 0; i+1 < len(labels); i += 2 {
		ls = append(ls, fmt.Sprintf("%s=%q", labels[i], labels[i+1]))
	}
	l := name
	if len(ls) > 0 {
		l += "{" + strings.Join(ls, ",") + "}"
	}
	m.lines = append(m.lines, fmt.Sprintf("%s %g", l, v))
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// WriteFile writes the metrics atomically as dir/name.prom, where
// node_exporter's textfile collector reads them. A missing dir is not an
// error: there is no collector to read them.
func (m *Metrics) WriteFile(dir, name string) error {
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return nil
	}
	return atomicfile.Write(filepath.Join(dir, name+".prom"), []byte(strings.Join(m.lines, "\n")+"\n"), 0o644)
}

// SuspendMetrics are a suspend's metrics; err is the run's outcome.
func SuspendMetrics(res *Result, err error) *Metrics {
	m := &Metrics{}
	ok := 1.0
	if err != nil {
		ok = 0
	}
	m.Gauge("ckpt_suspend_success", "1 if the last suspend-all committed", ok)
	m.Gauge("ckpt_suspend_timestamp_seconds", "when the last suspend-all ended", float64(time.Now().Unix()))
	if res != nil {
		m.Gauge("ckpt_suspend_bytes", "bytes dumped by the last suspend-all", float64(res.Bytes))
		m.Gauge("ckpt_suspend_dump_gbps", "dump throughput of the last suspend-all, GB/s", res.GBps)
		m.Gauge("ckpt_suspend_concurrency", "workloads dumped at once", float64(res.Concurrency))
		for _, w := range res.Workloads {
			m.Gauge("ckpt_workload_frozen_seconds", "from a workload's freeze to the commit", w.FrozenS, "workload", w.Key)
			m.Gauge("ckpt_workload_dump_bytes", "bytes a workload's dump wrote", float64(w.Bytes), "workload", w.Key)
		}
	}
	return m
}
