package criu

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCRIUErrorLeadsWithTheRealCause: the headline is CRIU's first real
// error, not the harmless RLIMIT_NOFILE line every run logs here (a log
// from a dump into a full region).
func TestCRIUErrorLeadsWithTheRealCause(t *testing.T) {
	log := `(00.000012) Version: 4.2.1 (gitid 0)
(00.060501) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.422600) Dumping pages (type: 55 pid: 20854)
(00.422687) Error (criu/page-xfer.c:263): page-xfer: Unable to spice data: No space left on device
(00.422781) Error (criu/bfd.c:131): bfd: Error flushing image: No space left on device
(00.435354) Error (criu/cr-dump.c:1975): Dumping FAILED.
`
	p := filepath.Join(t.TempDir(), "dump.log")
	if err := os.WriteFile(p, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newCRIUError("dump", "web", p, errors.New("runc checkpoint: exit status 1"))
	if e.Cause != "page-xfer: Unable to spice data: No space left on device" {
		t.Fatalf("cause = %q", e.Cause)
	}
	head, _, _ := strings.Cut(e.Error(), "\n")
	if head != "criu dump of web: page-xfer: Unable to spice data: No space left on device (runc checkpoint: exit status 1)" {
		t.Fatalf("headline = %q", head)
	}
	if !strings.Contains(e.Error(), "Dumping FAILED") {
		t.Fatal("the log tail is missing")
	}
}
