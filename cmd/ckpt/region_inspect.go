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
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := memregion.Open(args[0], memregion.Options{Logger: g.logger()})
			if err != nil {
				return err
			}
			defer r.Close()
			info := regionInfo{Path: r.Path(), Kind: r.Kind(), ID: r.ID()}
			if info.Total, info.Free, err = r.Space(); err != nil {
				return err
			}
			m, err := r.Manifest()
			switch {
			case err == nil:
				info.Sealed, info.Manifest = true, m
			case !errors.Is(err, memregion.ErrNotSealed):
				info.Error = err.Error()
			}
			return g.print(cmd.OutOrStdout(), info, func(w io.Writer) { printRegionInfo(w, info) })
		},
	}
}

func printRegionInfo(w io.Writer, info regionInfo) {
	fmt.Fprintf(w, "region %s (%s, id %s): %s, %s free\n", info.Path, info.Kind, info.ID,
		memregion.HumanBytes(info.Total), memregion.HumanBytes(info.Free))
	if info.Error != "" {
		fmt.Fprintf(w, "state: UNREADABLE: %s\n", info.Error)
		return
	}
	m := info.Manifest
	if m == nil {
		fmt.Fprintln(w, "state: empty (no committed checkpoint)")
		return
	}
	fmt.Fprintf(w, "state: sealed checkpoint of %s, kernel %s, boot %s, at %s\n",
		memregion.HumanBytes(m.TotalBytes()), m.Kernel, m.BootID, m.Created.Format("2006-01-02 15:04:05Z07:00"))
	for _, wl := range m.Workloads {
		fmt.Fprintf(w, "workload %s (%s, %s): %d objects\n", wl.ID, wl.Backend, wl.Kind, len(wl.Objects))
	}
	fmt.Fprintln(w, "objects (name size xxh3 offset):")
	for _, o := range m.Objects {
		off := int64(-1)
		if len(o.Extents) > 0 {
			off = o.Extents[0].Off
		}
		fmt.Fprintf(w, "  %s %d %016x %d\n", o.Name, o.Size, o.XXH3, off)
	}
}
