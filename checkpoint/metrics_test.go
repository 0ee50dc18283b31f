package checkpoint

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSuspendMetricsTextfile(t *testing.T) {
	dir := t.TempDir()
	res := &Result{Bytes: 3 << 20, GBps: 1.5, Concurrency: 2,
		Workloads: []WorkloadResult{{Key: "criu/a", Bytes: 1 << 20, FrozenS: 0.5}, {Key: "qemu/vm", Bytes: 2 << 20, FrozenS: 0.7}}}
	if err := SuspendMetrics(res, nil).WriteFile(dir, "ckpt_suspend"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "ckpt_suspend.prom"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{"ckpt_suspend_success 1", `ckpt_workload_frozen_seconds{workload="qemu/vm"} 0.7`, "ckpt_suspend_bytes 3.145728e+06",
		"# TYPE ckpt_workload_frozen_seconds gauge"} {
		if !strings.Contains(s, want) {
			t.Errorf("metrics lack %q:\n%s", want, s)
		}
	}
	if strings.Count(s, "# HELP ckpt_workload_frozen_seconds") != 1 {
		t.Errorf("HELP repeated:\n%s", s)
	}
	if err := SuspendMetrics(nil, errors.New("x")).WriteFile(filepath.Join(dir, "absent"), "ckpt_suspend"); err != nil {
		t.Fatalf("missing collector dir: %v", err)
	}
}
