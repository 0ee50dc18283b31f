package main

import (
	"fmt"

	"github.com/ckpt-dev/ckpt/memregion"
	"github.com/spf13/cobra"
)

func newRegionReleaseCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "release PATH",
		Short: "Drop the committed checkpoint (only after every workload was resumed)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := memregion.Open(args[0], memregion.Options{Logger: g.logger()})
			if err != nil {
				return regionError(err)
			}
			defer r.Close()
			if err := r.Release(); err != nil {
				return regionError(err)
			}
			if !g.json {
				fmt.Fprintf(cmd.OutOrStdout(), "released %s\n", printable(args[0]))
			}
			return nil
		},
	}
}
