package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/ckpt-dev/ckpt/checkpoint"
	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/memregion"
	"github.com/ckpt-dev/ckpt/restore"
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
	// RoundTrips (--round-trip) are real suspends, without a kexec, each
	// followed at once by a resume: ckpt's, then the stock tools'.
	RoundTrips []roundTrip `json:"round_trips,omitempty"`
}

// roundTrip is one suspend and resume of every workload, for real.
type roundTrip struct {
	Label     string              `json:"label"`
	Suspend   *checkpoint.Result  `json:"suspend"`
	Resume    *restore.Result     `json:"resume"`
	Workloads []roundTripWorkload `json:"per_workload"`
}

// roundTripWorkload is one workload's round trip: its blackout runs from
// its freeze to the moment it runs again; restore GB/s counts until all of
// its memory is back (a lazy restore's pages included).
type roundTripWorkload struct {
	Key         string  `json:"key"`
	Bytes       int64   `json:"bytes"`
	BlackoutS   float64 `json:"blackout_s"`
	DumpGBps    float64 `json:"dump_gbps"`
	RestoreS    float64 `json:"restore_s"`
	RestoreGBps float64 `json:"restore_gbps"`
}

// perWorkload joins a round trip's suspend and resume results by key.
func (rt *roundTrip) perWorkload() {
	bytes, dump := map[string]int64{}, map[string]float64{}
	for _, w := range rt.Suspend.Workloads {
		bytes[w.Key], dump[w.Key] = w.Bytes, w.DumpS
	}
	for _, w := range rt.Resume.Restored {
		in := max(w.Seconds, w.PagesInS)
		rw := roundTripWorkload{Key: w.Key, Bytes: bytes[w.Key], BlackoutS: w.BlackoutS, RestoreS: in}
		if d := dump[w.Key]; d > 0 {
			rw.DumpGBps = float64(rw.Bytes) / d / 1e9
		}
		if in > 0 {
			rw.RestoreGBps = float64(rw.Bytes) / in / 1e9
		}
		rt.Workloads = append(rt.Workloads, rw)
	}
}

// longest is the longest blackout of the round trip.
func (rt *roundTrip) longest() float64 {
	b := 0.0
	for _, w := range rt.Workloads {
		b = max(b, w.BlackoutS)
	}
	return b
}

func (rt *roundTrip) print(w io.Writer) {
	fmt.Fprintf(w, "%s: longest blackout %.2fs, restore %.2fs; dump %s; restore %s\n", rt.Label, rt.longest(), rt.Resume.Seconds,
		extraRAM(rt.Suspend), peakRAM(rt.Resume.PeakExtraRAM, rt.Suspend.Bytes))
	for _, x := range rt.Workloads {
		fmt.Fprintf(w, "  %-40s %10s  blackout %.2fs  dump %.2f GB/s  restore %.2fs %.2f GB/s\n", printable(x.Key),
			memregion.HumanBytes(x.Bytes), x.BlackoutS, x.DumpGBps, x.RestoreS, x.RestoreGBps)
	}
}

func newBenchCommand(g *globals) *cobra.Command {
	var f engineFlags
	var roundTrips bool
	c := &cobra.Command{
		Use:   "bench",
		Short: "Measure dump throughput on this host's workloads: ckpt vs one at a time vs memcpy",
		Long: `bench runs suspend-all as a dry run three times: with ckpt's parallel schedule, with
one workload at a time, and one at a time with the backends' default settings (QEMU's own
migration bandwidth limit, a single stream), the baseline of stock tools. Each run freezes
every workload for the length of its dump, then thaws it; nothing is committed. It also
measures plain memcpy bandwidth with 1 to 4 copiers in the same run. Without --region it
uses a directory region on /dev/shm.

With --round-trip it then suspends every workload for real (no kexec: the originals end)
and resumes it at once, twice: with ckpt's schedule (and --lazy, --huge-pages as given),
then one at a time with the backends' defaults. For each workload it reports the blackout
(its freeze to the moment it runs again), dump and restore GB/s, and for each run the peak
extra RAM of the dump and of the restore. Every workload is down for its blackout; one
that fails to come back keeps its images in the region (resume-all retries it).`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			keep := false // a round trip's images, after a failed resume
			if f.region == "" {
				dir, err := os.MkdirTemp("/dev/shm", "ckpt-bench-")
				if err != nil {
					return err
				}
				defer func() {
					if !keep {
						os.RemoveAll(dir)
					}
				}()
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
			rep.Defaults, err = run(1, stock)
			hypervisors.Close(stock) // the round trips connect again
			if err != nil {
				return err
			}
			_, rep.Memcpy = checkpoint.MeasureConcurrency(4)
			if rep.RegionWrite, err = regionWriteRate(f.region, min(max(rep.Bytes, 64*memregion.MiB), memregion.GiB)); err != nil {
				return err
			}
			if roundTrips {
				ours := roundTripRun{label: fmt.Sprintf("ckpt (%d at once)", rep.Ours.Concurrency), concurrency: f.concurrency, preDump: true,
					lazy: f.lazy, hugePages: f.hugePages}
				base := roundTripRun{label: "stock tools (one at a time, backend defaults)", concurrency: 1,
					extra: map[string]map[string]any{"qemu": {"max_bandwidth": -1, "multifd_channels": -1}}}
				for _, run := range []roundTripRun{ours, base} {
					rt, err := run.do(ctx, &f, log)
					if rt != nil {
						rep.RoundTrips = append(rep.RoundTrips, *rt)
					}
					if err != nil {
						keep = rt != nil // committed: the images are the only copy of what did not come back
						if keep {
							err = fmt.Errorf("%w\nthe images of what did not come back are kept: ckpt resume-all --region %s", err, f.region)
						}
						return err
					}
				}
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
				if len(rep.RoundTrips) > 0 {
					fmt.Fprintln(w, "round trips (a real suspend, no kexec, and a resume at once):")
				}
				for _, rt := range rep.RoundTrips {
					rt.print(w)
				}
				if len(rep.RoundTrips) == 2 && rep.RoundTrips[1].longest() > 0 {
					fmt.Fprintf(w, "ckpt's longest blackout is %.0f %% of the stock tools'\n", 100*rep.RoundTrips[0].longest()/rep.RoundTrips[1].longest())
				}
			})
		},
	}
	f.add(c.Flags())
	f.addRestore(c.Flags())
	c.Flags().BoolVar(&roundTrips, "round-trip", false, "also suspend and resume every workload for real (no kexec), with ckpt and with the stock tools: blackout and restore GB/s")
	return c
}

// roundTripRun is how one round trip suspends and resumes.
type roundTripRun struct {
	label       string
	concurrency int
	preDump     bool
	lazy        []string
	hugePages   bool
	extra       map[string]map[string]any // backend settings (the stock tools' defaults)
}

// do suspends every workload (no kexec) and resumes it at once, each with
// backends of its own (QEMU takes one QMP client per socket). It returns
// nil only when nothing was committed; past the commit it returns what it
// measured, with the resume's error.
func (run roundTripRun) do(ctx context.Context, f *engineFlags, log *slog.Logger) (*roundTrip, error) {
	bs, err := f.backendsWith(ctx, log, run.extra)
	if err != nil {
		return nil, err
	}
	p, err := checkpoint.NewPlan(ctx, checkpoint.Options{Region: f.region, Backends: bs, Only: f.only, Journal: f.journal,
		Concurrency: run.concurrency, PreDump: run.preDump, Logger: log})
	var sres *checkpoint.Result
	if err == nil {
		sres, err = checkpoint.Suspend(ctx, p)
	}
	hypervisors.Close(bs)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", run.label, err)
	}
	rt := &roundTrip{Label: run.label, Suspend: sres}
	if bs, err = f.backendsWith(ctx, log, run.extra); err != nil {
		return rt, err
	}
	defer hypervisors.Close(bs)
	rt.Resume, err = restore.ResumeAll(ctx, restore.Options{Region: f.region, Backends: bs, Concurrency: run.concurrency,
		Lazy: run.lazy, HugePages: run.hugePages, State: f.state, Journal: f.journal, Logger: log})
	if rt.Resume == nil {
		rt.Resume = &restore.Result{}
	}
	rt.perWorkload()
	if err != nil {
		return rt, fmt.Errorf("%s: resume: %w", run.label, err)
	}
	return rt, nil
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
func extraRAM(r *checkpoint.Result) string { return peakRAM(r.PeakExtraRAM, r.Bytes) }

// peakRAM says how much memory beyond the region a dump or restore of
// bytes took.
func peakRAM(extra, bytes int64) string {
	pct := 0.0
	if bytes > 0 {
		pct = 100 * float64(extra) / float64(bytes)
	}
	return fmt.Sprintf("peak extra RAM %s (%.1f %% of the bytes)", memregion.HumanBytes(extra), pct)
}
