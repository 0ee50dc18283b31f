package criu

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strings"
)

// CRIUError is a failed CRIU operation (through runc or go-criu) with the
// tail of CRIU's log, which says why.
type CRIUError struct {
	Op       string // "dump", "restore", "pre-dump"
	Workload string
	Errno    int    // CRIU's errno when it reported one, else 0
	Cause    string // CRIU's first real error in its log (see logCause)
	Log      string // last lines of CRIU's log
	Err      error  // the runner's error (exit status, RPC error)
}

func (e *CRIUError) Error() string {
	s := fmt.Sprintf("criu %s of %s: %v", e.Op, e.Workload, e.Err)
	if e.Cause != "" {
		s = fmt.Sprintf("criu %s of %s: %s (%v)", e.Op, e.Workload, e.Cause, e.Err)
	}
	if e.Errno != 0 {
		s += fmt.Sprintf(" (errno %d)", e.Errno)
	}
	if e.Log != "" {
		s += "\n--- criu log (tail) ---\n" + e.Log
	}
	return s
}

func (e *CRIUError) Unwrap() error { return e.Err }

// newCRIUError is a failed CRIU call with its log at logPath.
func newCRIUError(op, id, logPath string, err error) *CRIUError {
	return &CRIUError{Op: op, Workload: id, Cause: logCause(logPath), Log: logTail(logPath, 15), Err: err}
}

// harmless are CRIU errors that do not fail an operation: on this kind of
// host CRIU always logs that it cannot raise its own RLIMIT_NOFILE.
var harmless = []string{"Can't setup RLIMIT_NOFILE"}

// logCause is the first error in a CRIU log that is not harmless, without
// its timestamp and source location: what made the call fail.
func logCause(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		_, msg, ok := strings.Cut(l, "Error (")
		if !ok || slices.ContainsFunc(harmless, func(h string) bool { return strings.Contains(l, h) }) {
			continue
		}
		if _, m, ok := strings.Cut(msg, "): "); ok {
			msg = m
		}
		return strings.TrimSpace(msg)
	}
	return ""
}

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
