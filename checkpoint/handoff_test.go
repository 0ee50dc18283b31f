package checkpoint

import (
	"context"
	"errors"
	"testing"

	"github.com/ckpt-dev/ckpt/checkpoint/kexec"
	"github.com/ckpt-dev/ckpt/update"
)

// RunUpdate refuses, before it plans or freezes anything, a region the
// update path would lose: a soft-reboot keeps only /run, a full reboot
// keeps neither /run nor a memmap= device.
func TestRunUpdateRefusesARegionThePathLoses(t *testing.T) {
	for _, tc := range []struct {
		pc     update.Precheck
		region string
	}{
		{update.Precheck{Path: update.PathUserspace, SoftReboot: true}, "/dev/pmem0"},
		{update.Precheck{Path: update.PathUserspace, SoftReboot: true}, "/var/lib/ckpt/region"},
		{update.Precheck{Path: update.PathReboot}, "/dev/pmem0"},
		{update.Precheck{Path: update.PathReboot}, "/run/ckpt/region"},
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
