package main

import "github.com/spf13/cobra"

func newRegionCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "region",
		Short: "Plan, format, inspect, verify and release the preserved region",
	}
	c.AddCommand(
		newRegionPlanCommand(g),
		newRegionFormatCommand(g),
		newRegionInspectCommand(g),
		newRegionVerifyCommand(g),
		newRegionReleaseCommand(g),
		newRegionSelftestCommand(g),
	)
	return c
}
