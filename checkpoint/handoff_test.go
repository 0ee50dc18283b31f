package checkpoint

import (
	"context"
	"errors"
	"testing"

	"github.com/ckpt-dev/ckpt/checkpoint/kexec"
	"github.com/ckpt-dev/ckpt/memregion"
	"github.com/ckpt-dev/ckpt/update"
	"golang.org/x/sys/unix"
)

// RunUpdate refuses, before it plans or freezes anything, a region the
// update path would lose: a soft-reboot loses a tmpfs outside /run, a
// kexec any tmpfs, a full reboot a memmap= device too.
func TestRunUpdateRefusesARegionThePathLoses(t *testing.T) {
	shm := t.TempDir()
	if s, err := memregion.Survives(shm); err != nil || s.SoftReboot {
		// TempDir is on disk here: make a tmpfs of our own.
		shm = t.TempDir()
		if err := unix.Mount("tmpfs", shm, "tmpfs", 0, "size=1m"); err != nil {
			t.Skipf("no tmpfs to test with (mount: %v; needs root)", err)
		}
		t.Cleanup(func() { unix.Unmount(shm, unix.MNT_DETACH) })
	}
	for _, tc := range []struct {
		pc     update.Precheck
		region string
	}{
		{update.Precheck{Path: update.PathUserspace, SoftReboot: true}, shm + "/region"},
		{update.Precheck{Path: update.PathKexec}, shm + "/region"},
		{update.Precheck{Path: update.PathReboot}, "/dev/pmem0"},
		{update.Precheck{Path: update.PathReboot}, shm},
	} {
		_, err := RunUpdate(context.Background(), tc.pc, kexec.Image{}, Options{Region: tc.region}, Handoff{})
		if !errors.Is(err, ErrRegionLost) {
			t.Errorf("%s (soft-reboot %v) with region %s: %v; want ErrRegionLost", tc.pc.Path, tc.pc.SoftReboot, tc.region, err)
		}
	}
	if _, err := RunUpdate(context.Background(), update.Precheck{Path: update.PathNone}, kexec.Image{}, Options{Region: "/dev/pmem0"}, Handoff{}); err == nil {
		t.Error("RunUpdate with nothing due ran")
	}
}
