package criu

import (
	"bytes"
	"fmt"
	"os"
	"strings"
)

// CRIUError is a failed CRIU operation (through runc or go-criu) with the
// tail of CRIU's log, which says why.
type CRIUError struct {
	Op       string // "dump", "restore", "pre-dump"
	Workload string
	Errno    int    // CRIU's errno when it reported one, else 0
	Log      string // last lines of CRIU's log
	Err      error  // the runner's error (exit status, RPC error)
}

func (e *CRIUError) Error() string {
	s := fmt.Sprintf("criu %s of %s: %v", e.Op, e.Workload, e.Err)
	if e.Errno != 0 {
		s += fmt.Sprintf(" (errno %d)", e.Errno)
	}
	if e.Log != "" {
		s += "\n--- criu log (tail) ---\n" + e.Log
	}
	return s
}

func (e *CRIUError) Unwrap() error { return e.Err }

// logTail returns the last n lines of a CRIU log, preferring lines that
// say "Error".
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(bytes.TrimSpace(b)), "\n"), "\n")
	var errs []string
	for _, l := range lines {
		if strings.Contains(l, "Error") {
			errs = append(errs, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(errs) > 0 && len(errs) <= n {
		return strings.Join(errs, "\n") + "\n...\n" + strings.Join(lines[max(0, len(lines)-5):], "\n")
	}
	return strings.Join(lines, "\n")
}
