package main

import (
	"fmt"
	"time"

	"github.com/ckpt-dev/ckpt/memregion"
	"github.com/spf13/cobra"
)

func newRegionVerifyCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "verify PATH",
		Short: "Check the committed checkpoint: manifest, every object's size and xxh3 checksum",
		Long: `Check the committed checkpoint. A damaged region is refused with the name of
every failing object; nothing is deleted, so the images stay for a retry.
The region is opened read-only.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return regionError(verifyRegion(cmd, g, args[0]))
		},
	}
}

func verifyRegion(cmd *cobra.Command, g *globals, path string) error {
	ctx, cancel := g.context(cmd)
	defer cancel()
	r, err := memregion.Open(path, memregion.Options{Logger: g.logger(), ReadOnly: true})
	if err != nil {
		return err
	}
	defer r.Close()
	start := time.Now()
	m, err := r.Verify(ctx)
	if err != nil {
		return fmt.Errorf("region %s refused (nothing was deleted): %w", path, err)
	}
	took := time.Since(start)
	res := map[string]any{"path": path, "objects": len(m.Objects), "bytes": m.TotalBytes(), "seconds": took.Seconds()}
	if g.json {
		return g.print(cmd.OutOrStdout(), res, nil)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "region %s OK: %d objects, %s verified in %s (%.2f GB/s)\n", printable(path), len(m.Objects),
		memregion.HumanBytes(m.TotalBytes()), took.Round(time.Millisecond), float64(m.TotalBytes())/took.Seconds()/1e9)
	return nil
}
