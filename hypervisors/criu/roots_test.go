package criu

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestTreeRoots: the processes of a cgroup whose parent is outside it
// are the roots of its trees; more than one is what preflight refuses
// ("separate process trees"), with what to change.
func TestTreeRoots(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child")
	parent := exec.Command("sh", "-c", "sleep 60 & echo $! >"+pidFile+"; wait")
	other := exec.Command("sleep", "60")
	for _, c := range []*exec.Cmd{parent, other} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill(); c.Wait() })
	}
	var child int
	for deadline := time.Now().Add(10 * time.Second); child == 0; time.Sleep(10 * time.Millisecond) {
		b, _ := os.ReadFile(pidFile)
		child, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		if child == 0 && time.Now().After(deadline) {
			t.Fatal("the shell's child did not start")
		}
	}
	defer exec.Command("kill", strconv.Itoa(child)).Run()
	one := []int{parent.Process.Pid, child}
	if got := treeRoots(one); !slices.Equal(got, []int{parent.Process.Pid}) {
		t.Errorf("treeRoots(shell and its child) = %v; want the shell %d", got, parent.Process.Pid)
	}
	two := []int{parent.Process.Pid, child, other.Process.Pid}
	if got := treeRoots(two); len(got) != 2 || !slices.Contains(got, parent.Process.Pid) || !slices.Contains(got, other.Process.Pid) {
		t.Errorf("treeRoots(two trees) = %v; want %d and %d", got, parent.Process.Pid, other.Process.Pid)
	}
}
