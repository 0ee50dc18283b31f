package integration

import (
	"os/exec"
	"strings"
	"testing"
)

// TestCRIUInstalled checks the CRIU that hack/setup.sh installs: 4.2.x,
// run through its own loader, and "criu check" passes on this kernel.
func TestCRIUInstalled(t *testing.T) {
	requireRoot(t)
	criu := requireTool(t, "criu")
	out, err := exec.Command(criu, "--version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Version: 4.2") {
		t.Fatalf("criu --version: %v\n%s", err, out)
	}
	out, err = exec.Command(criu, "check").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Looks good") {
		t.Fatalf("criu check: %v\n%s", err, out)
	}
}
