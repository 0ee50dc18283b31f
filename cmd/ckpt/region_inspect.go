package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/ckpt-dev/ckpt/memregion"
	"github.com/spf13/cobra"
)

type regionInfo struct {
	Path     string              `json:"path"`
	Kind     string              `json:"kind"`
	ID       string              `json:"id"`
	Total    int64               `json:"total_bytes"`
	Free     int64               `json:"free_bytes"`
	Sealed   bool                `json:"sealed"`
	Manifest *memregion.Manifest `json:"manifest,omitempty"`
	Error    string              `json:"error,omitempty"`
}

func newRegionInspectCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect PATH",
		Short: "Show a region's state and the checkpoint it holds (without verifying data)",
		Long: `Show a region's state and the checkpoint it holds, without verifying data.
The region is opened read-only. Exits non-zero when the region's metadata
cannot be read (a damaged or unsafe region).`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return regionError(inspectRegion(cmd, g, args[0]))
		},
	}
}

func inspectRegion(cmd *cobra.Command, g *globals, path string) error {
	r, err := memregion.Open(path, memregion.Options{Logger: g.logger(), ReadOnly: true})
	if err != nil {
		return err
	}
	defer r.Close()
	info := regionInfo{Path: r.Path(), Kind: r.Kind(), ID: r.ID()}
	if info.Total, info.Free, err = r.Space(); err != nil {
		return err
	}
	m, merr := r.Manifest()
	switch {
	case merr == nil:
		info.Sealed, info.Manifest = true, m
	case errors.Is(merr, memregion.ErrNotSealed):
		merr = nil
	default:
		info.Error = merr.Error()
	}
	if err := g.print(cmd.OutOrStdout(), info, func(w io.Writer) { printRegionInfo(w, info) }); err != nil {
		return err
	}
	if merr != nil {
		return fmt.Errorf("region %s is unreadable: %w", path, merr)
	}
	return nil
}

func printRegionInfo(w io.Writer, info regionInfo) {
	fmt.Fprintf(w, "region %s (%s, id %s): %s, %s free\n", printable(info.Path), info.Kind, printable(info.ID),
		memregion.HumanBytes(info.Total), memregion.HumanBytes(info.Free))
	if info.Error != "" {
		fmt.Fprintf(w, "state: UNREADABLE: %s\n", printable(info.Error))
		return
	}
	m := info.Manifest
	if m == nil {
		fmt.Fprintln(w, "state: empty (no committed checkpoint)")
		return
	}
	fmt.Fprintf(w, "state: sealed checkpoint of %s, kernel %s, boot %s, at %s\n",
		memregion.HumanBytes(m.TotalBytes()), printable(m.Kernel), printable(m.BootID), m.Created.Format("2006-01-02 15:04:05Z07:00"))
	for _, wl := range m.Workloads {
		fmt.Fprintf(w, "workload %s (%s, %s): %d objects\n", printable(wl.ID), printable(wl.Backend), printable(wl.Kind), len(wl.Objects))
	}
	fmt.Fprintln(w, "objects (name size xxh3 offset):")
	for _, o := range m.Objects {
		off := int64(-1)
		if len(o.Extents) > 0 {
			off = o.Extents[0].Off
		}
		fmt.Fprintf(w, "  %s %d %016x %d\n", printable(o.Name), o.Size, o.XXH3, off)
	}
}
