package checkpoint_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/ckpt-dev/ckpt/checkpoint"
	"github.com/ckpt-dev/ckpt/checkpoint/kexec"
	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/restore"
)

// An update tool suspends every workload into the preserved region, hands
// off to the new kernel, and, early in the next boot, resumes them.
func Example() {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	// The backends register themselves when imported (hypervisors/criu,
	// hypervisors/qemu); Load starts the ones this host can run.
	backends, _, err := hypervisors.Load(ctx, nil, log)
	if err != nil {
		fmt.Println(err)
		return
	}
	opts := checkpoint.Options{Region: "/dev/pmem0", Backends: backends, Logger: log}

	plan, err := checkpoint.NewPlan(ctx, opts)
	var pe *checkpoint.PlanError
	if errors.As(err, &pe) {
		fmt.Println("blocked:", pe.Problems) // nothing was touched
		return
	}
	if err := kexec.Load(kexec.Image{Kernel: "/boot/vmlinuz-new", Initrd: "/boot/initrd.img-new", Cmdline: "…"}); err != nil {
		return // before anything is frozen
	}
	res, err := checkpoint.Suspend(ctx, plan)
	if err != nil {
		fmt.Println(err) // rolled back: every workload runs on this kernel
		return
	}
	fmt.Printf("committed %d bytes\n", res.Bytes)
	_ = kexec.Exec() // reboot into the new kernel

	// In the new kernel (ckpt resume-all, from ckpt-resume.service):
	rr, err := restore.ResumeAll(ctx, restore.Options{Region: "/dev/pmem0", Backends: backends, Order: []string{"vm"}})
	if errors.Is(err, restore.ErrPartial) {
		fmt.Println("retry later:", rr.Failed) // their images are kept
	}
}
