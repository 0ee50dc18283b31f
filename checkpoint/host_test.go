package checkpoint

import (
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/internal/testenv"
	"github.com/ckpt-dev/ckpt/memregion"
)

func TestProcessRunning(t *testing.T) {
	self, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Skip("no /proc")
	}
	comm := strings.TrimSpace(string(self))
	if !processRunning(comm, "") || !processRunning(comm, "-test.") {
		t.Errorf("processRunning(%q) = false for this very process", comm)
	}
	if processRunning(comm, "no-such-argument-xyz") || processRunning("no-such-comm-xyz", "") {
		t.Error("processRunning found a process that does not exist")
	}
}

// TestWatchMemory: memory taken during the watch counts; what the region
// grows by, where it is RAM (a tmpfs), does not.
func TestWatchMemory(t *testing.T) {
	if _, err := os.Stat("/dev/shm"); err != nil {
		t.Skip("no /dev/shm")
	}
	r := testenv.Region(t, "/dev/shm", memregion.KindDir, 0)
	path := r.Path()
	const n = 256 << 20
	// Staging: anonymous memory, touched.
	stop := watchMemory(r, path)
	buf := make([]byte, n)
	for i := 0; i < n; i += 4096 {
		buf[i] = 1
	}
	time.Sleep(3 * MemSampleInterval)
	staged := stop()
	runtime.KeepAlive(buf)
	buf = nil
	runtime.GC()
	// Into the region: its own pages, not extra.
	stop = watchMemory(r, path)
	if err := os.WriteFile(path+"/objects/blob", make([]byte, n), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * MemSampleInterval)
	region := stop()
	t.Logf("peak extra RAM: %s staging %s, %s writing them into the region", memregion.HumanBytes(staged), memregion.HumanBytes(n), memregion.HumanBytes(region))
	if staged < n/2 {
		t.Errorf("staging %d bytes counted %d", n, staged)
	}
	if region > n/2 {
		t.Errorf("writing %d bytes into a RAM region counted %d extra", n, region)
	}
}
