package qemu

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestGoneOnlyWhenTheVMIsGone: a monitor that cannot be reached because
// nothing is there (no socket, or a socket no QEMU listens on any more) is
// a gone VM; a timeout, a busy socket or a cancel never is.
func TestGoneOnlyWhenTheVMIsGone(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.qmp")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // the socket file stays, nobody listens: QEMU died
	_, staleErr := net.Dial("unix", stale)
	_, missingErr := net.Dial("unix", filepath.Join(dir, "none.qmp"))
	for _, tc := range []struct {
		err  error
		gone bool
	}{
		{staleErr, true},
		{missingErr, true},
		{fmt.Errorf("qmp: %w", syscall.EAGAIN), false},
		{fmt.Errorf("qmp: %w", syscall.ETIMEDOUT), false},
		{context.DeadlineExceeded, false},
		{context.Canceled, false},
		{os.ErrDeadlineExceeded, false},
	} {
		if got := gone(tc.err); got != tc.gone {
			t.Errorf("gone(%v) = %v; want %v", tc.err, got, tc.gone)
		}
	}
}
