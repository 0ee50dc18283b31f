package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/godbus/dbus/v5"
)

// ErrNoLogind means systemd-logind is not reachable (no system bus, or a
// host without systemd): nothing can be inhibited, and nothing needs to be.
var ErrNoLogind = errors.New("systemd-logind is not running")

// InhibitShutdown takes a logind "block" inhibitor lock for shutdown and
// sleep, so that nothing reboots the host while workloads are frozen or
// half dumped. release drops it. Where logind does not run it returns
// ErrNoLogind.
func InhibitShutdown(ctx context.Context, why string) (release func(), err error) {
	if _, err := os.Stat("/run/systemd/seats"); err != nil {
		if _, err := os.Stat("/run/dbus/system_bus_socket"); err != nil {
			return func() {}, ErrNoLogind
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := dbus.ConnectSystemBus(dbus.WithContext(ctx))
	if err != nil {
		return func() {}, fmt.Errorf("%w: %v", ErrNoLogind, err)
	}
	var fd dbus.UnixFD
	obj := conn.Object("org.freedesktop.login1", "/org/freedesktop/login1")
	if err := obj.CallWithContext(ctx, "org.freedesktop.login1.Manager.Inhibit", 0,
		"shutdown:sleep", "ckpt", why, "block").Store(&fd); err != nil {
		conn.Close()
		return func() {}, fmt.Errorf("%w: Inhibit: %v", ErrNoLogind, err)
	}
	f := os.NewFile(uintptr(fd), "logind-inhibitor")
	return func() { f.Close(); conn.Close() }, nil
}
