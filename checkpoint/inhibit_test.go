package checkpoint

import (
	"context"
	"errors"
	"os"
	"testing"
)

// TestInhibitShutdown takes and drops the logind inhibitor where logind
// runs; elsewhere it must say so quickly instead of failing the suspend.
func TestInhibitShutdown(t *testing.T) {
	release, err := InhibitShutdown(context.Background(), "test")
	if _, serr := os.Stat("/run/dbus/system_bus_socket"); serr != nil {
		if !errors.Is(err, ErrNoLogind) {
			t.Fatalf("without a system bus: %v; want ErrNoLogind", err)
		}
		t.Logf("no system bus here: %v (the inhibitor path needs logind)", err)
		return
	}
	if err != nil && !errors.Is(err, ErrNoLogind) {
		t.Fatal(err)
	}
	release()
}
