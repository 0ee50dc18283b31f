package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/ckpt-dev/ckpt/checkpoint"
	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/memregion"
	"github.com/spf13/cobra"
)

// benchReport is what ckpt bench measured, side by side in one run.
type benchReport struct {
	Workloads  int                `json:"workloads"`
	Bytes      int64              `json:"bytes"`
	Ours       *checkpoint.Result `json:"ours"`
	Sequential *checkpoint.Result `json:"sequential"`
	// Defaults is one at a time with the backends' default settings (QEMU's
	// own migration bandwidth limit, a single stream): what a script
	// suspending workloads one by one with stock tools gets.
	Defaults *checkpoint.Result     `json:"defaults"`
	Memcpy   []checkpoint.Bandwidth `json:"memcpy"`
	// RegionWrite is memcpy into the same region (GB/s): as many bytes as
	// the workloads (at most 1 GiB) written the way objects are, unhashed.
	RegionWrite float64 `json:"region_write_gbps"`
}

func newBenchCommand(g *globals) *cobra.Command {
	var f engineFlags
	c := &cobra.Command{
		Use:   "bench",
		Short: "Measure dump throughput on this host's workloads: ckpt vs one at a time vs memcpy",
		Long: `bench runs suspend-all as a dry run three times: with ckpt's parallel schedule, with
one workload at a time, and one at a time with the backends' default settings (QEMU's own
migration bandwidth limit, a single stream), the baseline of stock tools. Each run freezes
every workload for the length of its dump, then thaws it; nothing is committed. It also
measures plain memcpy bandwidth with 1 to 4 copiers in the same run. Without --region it
uses a directory region on /dev/shm.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.region == "" {
				dir, err := os.MkdirTemp("/dev/shm", "ckpt-bench-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(dir)
				f.region = filepath.Join(dir, "region")
				if err := memregion.Format(f.region, memregion.FormatOptions{Kind: memregion.KindDir}); err != nil {
					return err
				}
			}
			ctx, cancel, log, bs, err := f.start(cmd, g, true)
			if err != nil {
				return err
			}
			defer cancel()
			rep := benchReport{}
			run := func(concurrency int, bs []hypervisors.Backend) (*checkpoint.Result, error) {
				p, err := checkpoint.NewPlan(ctx, checkpoint.Options{Region: f.region, Backends: bs, Only: f.only, Journal: f.journal,
					Concurrency: concurrency, DryRun: true, Logger: log})
				if err != nil {
					return nil, err
				}
				rep.Workloads, rep.Bytes = len(p.Workloads), p.Bytes
				return checkpoint.Suspend(ctx, p)
			}
			if rep.Ours, err = run(f.concurrency, bs); err != nil {
				return err
			}
			if rep.Sequential, err = run(1, bs); err != nil {
				return err
			}
			// QEMU takes one QMP client per socket: let go of ours first.
			for _, b := range bs {
				if c, ok := b.(io.Closer); ok {
					c.Close()
				}
			}
			stock, err := f.backendsWith(ctx, log, map[string]map[string]any{"qemu": {"max_bandwidth": -1, "multifd_channels": -1}})
			if err != nil {
				return err
			}
			defer hypervisors.Close(stock)
			if rep.Defaults, err = run(1, stock); err != nil {
				return err
			}
			_, rep.Memcpy = checkpoint.MeasureConcurrency(4)
			if rep.RegionWrite, err = regionWriteRate(f.region, min(max(rep.Bytes, 64*memregion.MiB), memregion.GiB)); err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), rep, func(w io.Writer) {
				best := 0.0
				for _, m := range rep.Memcpy {
					best = max(best, m.GBps)
				}
				fmt.Fprintf(w, "%d workloads, %s\n", rep.Workloads, memregion.HumanBytes(rep.Ours.Bytes))
				fmt.Fprintf(w, "ckpt (%d at once)   %6.2f GB/s  dump %.2fs  %s\n", rep.Ours.Concurrency, rep.Ours.GBps, rep.Ours.Phases["dump"], extraRAM(rep.Ours))
				printWorkloads(w, rep.Ours)
				fmt.Fprintf(w, "one at a time      %6.2f GB/s  dump %.2fs  %s\n", rep.Sequential.GBps, rep.Sequential.Phases["dump"], extraRAM(rep.Sequential))
				fmt.Fprintf(w, "backend defaults   %6.2f GB/s  dump %.2fs  %s  (one at a time, QEMU's own bandwidth limit)\n", rep.Defaults.GBps, rep.Defaults.Phases["dump"], extraRAM(rep.Defaults))
				fmt.Fprintf(w, "memcpy (best of 1-4 copiers) %6.2f GB/s\n", best)
				fmt.Fprintf(w, "memcpy into this region %6.2f GB/s: ckpt reaches %.0f %% of it\n", rep.RegionWrite, 100*rep.Ours.GBps/rep.RegionWrite)
				if best > 0 {
					fmt.Fprintf(w, "ckpt reaches %.0f %% of memcpy, %.2fx one at a time, %.2fx backend defaults\n", 100*rep.Ours.GBps/best,
						rep.Ours.GBps/rep.Sequential.GBps, rep.Ours.GBps/rep.Defaults.GBps)
				}
			})
		},
	}
	f.add(c.Flags())
	return c
}

// regionWriteRate is memcpy into the region at path (GB/s).
func regionWriteRate(path string, n int64) (float64, error) {
	r, err := memregion.Open(path, memregion.Options{})
	if err != nil {
		return 0, err
	}
	defer r.Close()
	return r.WriteRate(n)
}

// extraRAM says how much memory a dump took beyond the region.
func extraRAM(r *checkpoint.Result) string {
	pct := 0.0
	if r.Bytes > 0 {
		pct = 100 * float64(r.PeakExtraRAM) / float64(r.Bytes)
	}
	return fmt.Sprintf("peak extra RAM %s (%.1f %% of the bytes)", memregion.HumanBytes(r.PeakExtraRAM), pct)
}
