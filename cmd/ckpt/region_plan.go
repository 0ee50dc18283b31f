package main

import (
	"fmt"
	"io"

	"github.com/ckpt-dev/ckpt/memregion"
	"github.com/spf13/cobra"
)

type regionPlanResult struct {
	Existing []memregion.Reservation `json:"existing"`
	Start    uint64                  `json:"start"`
	Size     uint64                  `json:"size"`
	Cmdline  string                  `json:"cmdline"`
}

func newRegionPlanCommand(g *globals) *cobra.Command {
	var size string
	c := &cobra.Command{
		Use:   "plan",
		Short: "Propose a RAM range to reserve for the region, from /proc/iomem",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			n, err := memregion.ParseSize(size)
			if err != nil {
				return usageError{err}
			}
			mm, err := memregion.MemoryMap()
			if err != nil {
				return err
			}
			existing, err := memregion.FindReservations()
			if err != nil {
				return err
			}
			res := regionPlanResult{Existing: existing}
			p, err := memregion.Plan(mm, n)
			if err != nil {
				return err
			}
			res.Start, res.Size, res.Cmdline = p.Start, p.Size, p.CmdlineFragment()
			return g.print(cmd.OutOrStdout(), res, func(w io.Writer) { printPlan(w, res) })
		},
	}
	c.Flags().StringVar(&size, "size", "4G", "region size (rounded up to 128M)")
	return c
}

func printPlan(w io.Writer, res regionPlanResult) {
	for _, r := range res.Existing {
		dev := r.Device
		if dev == "" {
			dev = "no pmem device (load nd_e820 and nd_pmem)"
		}
		fmt.Fprintf(w, "existing reservation: %s (%s)\n", r.CmdlineFragment(), dev)
	}
	fmt.Fprintf(w, "proposed: %s of RAM at %#x\n\n", memregion.HumanBytes(int64(res.Size)), res.Start)
	fmt.Fprintf(w, "Add to the kernel command line:\n    %s\n\n", res.Cmdline)
	fmt.Fprintf(w, "With GRUB: append it to GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub,\n")
	fmt.Fprintf(w, "and reboot once; the range then appears as /dev/pmem0. ckpt repeats it on every\n")
	fmt.Fprintf(w, "kexec command line (the next kernel does not inherit it).\n")
}
