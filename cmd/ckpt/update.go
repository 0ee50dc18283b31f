package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/ckpt-dev/ckpt/checkpoint"
	"github.com/ckpt-dev/ckpt/checkpoint/kexec"
	"github.com/ckpt-dev/ckpt/fleetlock"
	"github.com/ckpt-dev/ckpt/update"
	"github.com/spf13/cobra"
)

// exitNotDue: ckpt update --check found nothing to do.
const exitNotDue = 4

// errNotDue ends ckpt update --check with exitNotDue.
type errNotDue struct{ reason string }

func (e errNotDue) Error() string { return e.reason }

func newUpdateCommand(g *globals) *cobra.Command {
	var f engineFlags
	var target targetFlags
	var fleet fleetFlags
	var check, preDump bool
	c := &cobra.Command{
		Use:   "update [VERSION]",
		Short: "The whole update: precheck, then the cheapest path that applies (kexec, soft-reboot, reboot), every workload resumed",
		Long: `update picks the kernel the bootloader boots by default (GRUB's GRUB_DEFAULT,
saved_entry and next_entry in grubenv, grub.cfg's entries; or systemd-boot's
loader.conf), or VERSION, and prints which update path applies and why:

  none         No action required
  livepatched  the running kernel is live-patched for what is pending (never guessed)
  userspace    the kernel is unchanged but a restart is required: systemctl soft-reboot
               (systemd 254 or later; else a kexec into the same kernel)
  kexec        a new kernel: suspend-all, kexec, resume at boot
  reboot       kexec is impossible: a region on disk and a full reboot

--check stops after the precheck; it exits 0 when an update is due and 4 when
not, for kured's --reboot-sentinel-command.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			version := ""
			if len(args) == 1 {
				version = args[0]
			}
			k, img, err := update.Target(version)
			if err != nil {
				return err
			}
			pc := update.Check(update.HostFacts("/"), k)
			g.print(cmd.OutOrStdout(), pc, func(w io.Writer) { printPrecheck(w, pc) })
			if check {
				if !pc.Due() {
					return errNotDue{pc.Reason}
				}
				return nil
			}
			if !pc.Due() {
				return nil
			}
			img.Cmdline = kexec.EditCmdline(img.Cmdline, target.set, target.drop)
			return runUpdate(cmd, g, &f, pc, img, fleet.config(), preDump)
		},
	}
	f.add(c.Flags())
	target.addCmdline(c.Flags())
	fleet.add(c.Flags())
	c.Flags().BoolVar(&check, "check", false, "only the precheck: exit 0 when an update is due, 4 when not")
	c.Flags().BoolVar(&preDump, "pre-dump", true, "copy memory ahead of the freeze where backends can")
	return c
}

func printPrecheck(w io.Writer, pc update.Precheck) {
	fmt.Fprintf(w, "update path: %s\n  %s\n", pc.Path, pc.Reason)
	for i, s := range pc.Steps {
		fmt.Fprintf(w, "  %d. %s\n", i+1, s)
	}
}

// runUpdate takes the precheck's path (checkpoint.RunUpdate).
func runUpdate(cmd *cobra.Command, g *globals, f *engineFlags, pc update.Precheck, img kexec.Image, fleet *fleetlock.Config, preDump bool) error {
	// A soft-reboot keeps /run: without a region, the update makes one there.
	f.regionOptional = pc.Path == update.PathUserspace && pc.SoftReboot
	ctx, cancel, opts, err := f.suspendOptions(cmd, g, suspendRequest{fleet: fleet, preDump: preDump})
	if err != nil {
		return err
	}
	defer cancel()
	_, err = checkpoint.RunUpdate(ctx, pc, img, opts, g.handoff(cmd, f, checkpoint.Handoff{}))
	if errors.Is(err, checkpoint.ErrRegionLost) {
		return usageError{err}
	}
	return err
}
