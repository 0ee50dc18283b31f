package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/ckpt-dev/ckpt/checkpoint/kexec"
	"github.com/spf13/cobra"
)

func newKexecCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "kexec",
		Short: "Load, unload or boot into a kernel with kexec_file_load",
	}
	var img kexec.Image
	var reuse bool
	var set, drop []string
	load := &cobra.Command{
		Use:   "load",
		Short: "Load a kernel for kexec (never executes it)",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if img.Kernel == "" {
				return usageError{fmt.Errorf("--kernel is required")}
			}
			if reuse {
				cur, err := os.ReadFile("/proc/cmdline")
				if err != nil {
					return err
				}
				img.Cmdline = strings.TrimSpace(string(cur)) + " " + img.Cmdline
			}
			img.Cmdline = kexec.EditCmdline(img.Cmdline, set, drop)
			if err := kexec.Load(img); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "loaded %s (initrd %q) with command line: %s\n", img.Kernel, img.Initrd, img.Cmdline)
			return nil
		},
	}
	f := load.Flags()
	f.StringVar(&img.Kernel, "kernel", "", "kernel image (vmlinuz)")
	f.StringVar(&img.Initrd, "initrd", "", "initramfs")
	f.StringVar(&img.Cmdline, "append", "", "command line (added after the current one with --reuse-cmdline)")
	f.BoolVar(&reuse, "reuse-cmdline", false, "start from the running kernel's /proc/cmdline")
	f.StringSliceVar(&set, "set", nil, "key=value parameters that replace any with the same key")
	f.StringSliceVar(&drop, "drop", nil, "parameter keys to remove")

	unload := &cobra.Command{
		Use:   "unload",
		Short: "Unload a loaded kernel, so the next reboot is a cold one",
		Args:  exactArgs(0),
		RunE:  func(*cobra.Command, []string) error { return kexec.Unload() },
	}
	exec := &cobra.Command{
		Use:   "exec",
		Short: "Sync and reboot into the loaded kernel now (no workloads are suspended)",
		Args:  exactArgs(0),
		RunE:  func(*cobra.Command, []string) error { return kexec.Exec() },
	}
	c.AddCommand(load, unload, exec)
	return c
}
