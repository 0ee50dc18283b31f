package main

import (
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"

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

// runUpdate takes the precheck's path.
func runUpdate(cmd *cobra.Command, g *globals, f *engineFlags, pc update.Precheck, img kexec.Image, fleet *fleetlock.Config, preDump bool) error {
	attrs := map[string]string{"update_path": string(pc.Path), "update_target": pc.Target.Version}
	switch {
	case pc.Path == update.PathKexec:
		return suspendAll(cmd, g, f, suspendRequest{img: &img, fleet: fleet, attrs: attrs, preDump: preDump})
	case pc.Path == update.PathUserspace && !pc.SoftReboot:
		// The same kernel again: kexec restarts userspace (and the kernel).
		same, err := kernelTarget(pc.Facts.Running)
		if err != nil {
			return err
		}
		same.Cmdline = img.Cmdline
		attrs["update_target"] = pc.Facts.Running
		return suspendAll(cmd, g, f, suspendRequest{img: &same, fleet: fleet, attrs: attrs, preDump: preDump})
	case pc.Path == update.PathUserspace:
		if !strings.HasPrefix(filepath.Clean(f.region)+"/", "/run/") {
			return usageError{fmt.Errorf("a soft-reboot keeps only /run: give a directory region there (ckpt region format /run/ckpt/region --kind dir; --region /run/ckpt/region), not %s", f.region)}
		}
		attrs["update_target"] = pc.Facts.Running
		return suspendAll(cmd, g, f, suspendRequest{fleet: fleet, attrs: attrs, preDump: preDump, after: func() error {
			return systemctl("soft-reboot")
		}})
	case pc.Path == update.PathReboot:
		if strings.HasPrefix(f.region, "/dev/pmem") || strings.HasPrefix(filepath.Clean(f.region)+"/", "/run/") {
			return usageError{fmt.Errorf("kexec is impossible here, and region %s does not survive a full reboot: format one on disk (ckpt region format /var/lib/ckpt/region --kind dir) and give --region", f.region)}
		}
		return suspendAll(cmd, g, f, suspendRequest{fleet: fleet, attrs: attrs, preDump: preDump, after: func() error {
			return systemctl("reboot")
		}})
	}
	return fmt.Errorf("update path %s: nothing to run", pc.Path)
}

// systemctl hands the host to systemd once every workload is committed;
// inhibitors held by others do not stop an update that is under way.
func systemctl(verb string) error {
	out, err := exec.Command("systemctl", "--ignore-inhibitors", verb).CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl %s: %w: %s (the checkpoint is committed: reboot by hand, and ckpt-resume.service resumes it)", verb, err, strings.TrimSpace(string(out)))
	}
	return nil
}
