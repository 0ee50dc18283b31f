// Command ckpt suspends every container and VM of a host into memory that
// survives kexec, boots a new kernel, and resumes them.
//
// Exit codes: 0 success, 1 error, 2 usage error, 3 some workloads could
// not be resumed (they keep their images; run resume-all again).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// Exit codes, documented in README.md.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// usageError marks errors in how ckpt was called.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := newRootCommand()
	err := cmd.ExecuteContext(ctx)
	if err == nil {
		os.Exit(exitOK)
	}
	var nd errNotDue
	if errors.As(err, &nd) {
		os.Exit(exitNotDue) // ckpt update --check: nothing to do (printed already)
	}
	// Errors may quote a region's bytes (workload names, object names).
	fmt.Fprintln(os.Stderr, "ckpt:", escape(err.Error(), true))
	var ue usageError
	if errors.As(err, &ue) {
		os.Exit(exitUsage)
	}
	var pe partialError
	if errors.As(err, &pe) {
		os.Exit(exitPartial)
	}
	os.Exit(exitError)
}
