package main

import (
	"fmt"
	"time"

	"github.com/ckpt-dev/ckpt/memregion"
	"github.com/spf13/cobra"
)

func newRegionSelftestCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "selftest",
		Short: "Write or check a test checkpoint of known content",
	}
	var spec memregion.SelftestSpec
	var size string
	write := &cobra.Command{
		Use:   "write PATH",
		Short: "Write and seal a test checkpoint (the region must be empty)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := memregion.ParseSize(size)
			if err != nil {
				return usageError{err}
			}
			spec.Size = n
			ctx, cancel := g.context(cmd)
			defer cancel()
			r, err := memregion.Open(args[0], memregion.Options{Logger: g.logger()})
			if err != nil {
				return regionError(err)
			}
			defer r.Close()
			start := time.Now()
			m, err := memregion.WriteSelftest(ctx, r, spec)
			if err != nil {
				return regionError(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "selftest checkpoint sealed in %s: %d objects, %s, boot %s\n",
				args[0], len(m.Objects), memregion.HumanBytes(m.TotalBytes()), m.BootID)
			g.logger().Debug("selftest write", "took", time.Since(start))
			return nil
		},
	}
	write.Flags().IntVar(&spec.Objects, "objects", 4, "number of objects")
	write.Flags().StringVar(&size, "size", "8M", "bytes per object")

	var newBoot bool
	check := &cobra.Command{
		Use:   "check PATH",
		Short: "Verify the test checkpoint and compare every byte with what was written",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := g.context(cmd)
			defer cancel()
			r, err := memregion.Open(args[0], memregion.Options{Logger: g.logger(), ReadOnly: true})
			if err != nil {
				return regionError(err)
			}
			defer r.Close()
			m, err := memregion.CheckSelftest(ctx, r)
			if err != nil {
				return regionError(fmt.Errorf("region %s refused (nothing was deleted): %w", args[0], err))
			}
			if newBoot && m.BootID == memregion.BootID() {
				return regionError(fmt.Errorf("checkpoint was written in this boot (%s); expected a kexec in between", m.BootID))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "selftest checkpoint intact: %d objects, %s, written by kernel %s boot %s, now kernel %s boot %s\n",
				len(m.Objects), memregion.HumanBytes(m.TotalBytes()), printable(m.Kernel), printable(m.BootID), memregion.KernelRelease(), memregion.BootID())
			return nil
		},
	}
	check.Flags().BoolVar(&newBoot, "expect-new-boot", false, "fail unless the checkpoint was written in an earlier boot")
	c.AddCommand(write, check)
	return c
}
