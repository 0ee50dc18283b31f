package checkpoint

import (
	"os"
	"strings"
	"testing"
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
