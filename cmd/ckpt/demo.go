package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ckpt-dev/ckpt/checkpoint"
	"github.com/ckpt-dev/ckpt/memregion"
	"github.com/spf13/cobra"
)

func newDemoCommand(g *globals) *cobra.Command {
	var dir, size, guestKernel string
	var regionOnly bool
	c := &cobra.Command{
		Use:   "demo",
		Short: "Show ckpt on this host: suspend and resume a sample container and VM",
		Long: `Run ckpt's main job on an embedded default, touching none of the host's own workloads:
propose a RAM range for the preserved region; in a region on tmpfs write a checkpoint of
known content, verify it, show that a corrupted byte is refused without deleting
anything, and release it; then start a sample runc container and a QEMU VM that print
counters, suspend both into a region (freeze, parallel dump, seal), resume them, and show
that both counters continue. Every step is timed.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			n, err := memregion.ParseSize(size)
			if err != nil {
				return usageError{err}
			}
			ctx, cancel := g.context(cmd)
			defer cancel()
			w := cmd.OutOrStdout()
			if err := runDemo(ctx, w, dir, n); err != nil {
				return err
			}
			if regionOnly {
				return nil
			}
			if guestKernel == "" {
				guestKernel = findGuestKernel()
			}
			if miss := demoPrereqs(guestKernel); len(miss) > 0 {
				return fmt.Errorf("the workload demo needs %s; run ./hack/setup.sh as root from the repository (or pass --region-only)",
					strings.Join(miss, ", "))
			}
			log := g.logger()
			var bar func(checkpoint.Event) // a progress bar, on a terminal only
			if g.term != nil {
				ev := g.events(io.Discard, log)
				bar = func(e checkpoint.Event) {
					if e.Phase == "progress" {
						ev(e)
					}
				}
				w = g.term.sharing(w)
			}
			if err := runWorkloadDemo(ctx, w, dir, guestKernel, log, bar); err != nil {
				return fmt.Errorf("workload demo: %w", err)
			}
			fmt.Fprintln(w, "demo OK: a container and a VM were suspended into a region and resumed")
			return nil
		},
	}
	c.Flags().StringVar(&dir, "dir", "/dev/shm", "tmpfs directory for the demo region")
	c.Flags().StringVar(&size, "size", "256M", "checkpoint size")
	c.Flags().StringVar(&guestKernel, "guest-kernel", "", "kernel for the sample VM (default: .cache/kernels from hack/setup.sh)")
	c.Flags().BoolVar(&regionOnly, "region-only", false, "only the region part: no container, no VM")
	return c
}

func runDemo(ctx context.Context, w io.Writer, base string, size int64) error {
	step := func(name string, fn func() (string, error)) error {
		start := time.Now()
		msg, err := fn()
		if err != nil {
			fmt.Fprintf(w, "%-9s FAILED after %s: %v\n", name, time.Since(start).Round(time.Millisecond), err)
			return err
		}
		fmt.Fprintf(w, "%-9s %8s  %s\n", name, time.Since(start).Round(time.Millisecond), msg)
		return nil
	}
	if err := step("plan", func() (string, error) { return demoPlan(size) }); err != nil {
		fmt.Fprintln(w, "          (planning needs root to read /proc/iomem; continuing)")
	}
	dir, err := os.MkdirTemp(base, "ckpt-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "region")
	var r *memregion.Region
	steps := []struct {
		name string
		fn   func() (string, error)
	}{
		{"format", func() (string, error) {
			if err := memregion.Format(path, memregion.FormatOptions{Kind: memregion.KindRaw, Size: size + 64*memregion.MiB}); err != nil {
				return "", err
			}
			r, err = memregion.Open(path, memregion.Options{})
			return "raw region in " + path, err
		}},
		{"write", func() (string, error) {
			m, err := memregion.WriteSelftest(ctx, r, memregion.SelftestSpec{Objects: 4, Size: size / 4})
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("%d objects, %s, sealed (manifest written last)", len(m.Objects), memregion.HumanBytes(m.TotalBytes())), nil
		}},
		{"verify", func() (string, error) {
			m, err := memregion.CheckSelftest(ctx, r)
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("manifest and %d xxh3 checksums match, every byte compared", len(m.Objects)), nil
		}},
		{"corrupt", func() (string, error) { return demoCorrupt(ctx, r, path) }},
		{"release", func() (string, error) { return "checkpoint dropped", r.Release() }},
	}
	defer func() {
		if r != nil {
			r.Close()
		}
	}()
	for _, s := range steps {
		if err := step(s.name, s.fn); err != nil {
			return err
		}
	}
	fmt.Fprintln(w, "region OK")
	return nil
}

func demoPlan(size int64) (string, error) {
	mm, err := memregion.MemoryMap()
	if err != nil {
		return "", err
	}
	if rs := memregion.Reservations(mm); len(rs) > 0 {
		return "existing reservation " + rs[0].CmdlineFragment(), nil
	}
	p, err := memregion.Plan(mm, size)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("reserve with kernel parameter %s (ckpt region plan)", p.CmdlineFragment()), nil
}

// demoCorrupt flips one byte of an object, shows the refusal, and repairs it.
func demoCorrupt(ctx context.Context, r *memregion.Region, path string) (string, error) {
	m, err := r.Manifest()
	if err != nil {
		return "", err
	}
	o := m.Objects[len(m.Objects)-1]
	off := o.Extents[0].Off + o.Size/2
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b := []byte{0}
	if _, err := f.ReadAt(b, off); err != nil {
		return "", err
	}
	flip := func() error { b[0] ^= 1; _, err := f.WriteAt(b, off); return err }
	if err := flip(); err != nil {
		return "", err
	}
	_, verr := r.Verify(ctx)
	if err := flip(); err != nil {
		return "", err
	}
	if verr == nil {
		return "", fmt.Errorf("a flipped byte in %s went unnoticed", o.Name)
	}
	if _, err := r.Verify(ctx); err != nil {
		return "", err
	}
	return fmt.Sprintf("flipped a byte: refused (%v); images kept, repaired", verr), nil
}
