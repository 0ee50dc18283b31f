package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ckpt-dev/ckpt/checkpoint"
	"github.com/ckpt-dev/ckpt/checkpoint/kexec"
	"github.com/ckpt-dev/ckpt/fleetlock"
	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/journal"
	"github.com/ckpt-dev/ckpt/memregion"
	"github.com/ckpt-dev/ckpt/restore"
	"github.com/ckpt-dev/ckpt/update"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	// The backends register themselves.
	_ "github.com/ckpt-dev/ckpt/hypervisors/containerd"
	_ "github.com/ckpt-dev/ckpt/hypervisors/criu"
	_ "github.com/ckpt-dev/ckpt/hypervisors/docker"
	_ "github.com/ckpt-dev/ckpt/hypervisors/libvirt"
	_ "github.com/ckpt-dev/ckpt/hypervisors/podman"
	_ "github.com/ckpt-dev/ckpt/hypervisors/qemu"
)

// exitPartial: resume-all could not resume every workload.
const exitPartial = 3

// engineFlags are what the engine verbs share.
type engineFlags struct {
	region      string
	journal     string
	state       string
	backend     backendFlags
	skipped     map[string]error // backends that declined, and why
	concurrency int
	only        []string
	metricsDir  string
	configDir   string
	// regionOptional: the library picks a region when none is given
	// (ckpt update's soft-reboot path: checkpoint.SoftRebootRegion).
	regionOptional bool
	configured     bool     // applyConfig ran
	hugePages      bool     // resume: restore.Options.HugePages
	lazy           []string // resume: restore.Options.Lazy
}

func (f *engineFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&f.region, "region", "", "the region (pmem device, file or directory); required")
	fs.StringVar(&f.journal, "journal", checkpoint.DefaultJournal, "journal of frozen workloads (on disk, not /run)")
	fs.StringVar(&f.state, "resume-state", restore.DefaultState, "record of the workloads already resumed")
	f.backend.add(fs)
	fs.IntVar(&f.concurrency, "concurrency", 0, "workloads dumped or restored at once (0: from the CPUs)")
	fs.StringSliceVar(&f.only, "only", nil, "only these workloads (backend/id, repeatable)")
	fs.StringVar(&f.configDir, "config-dir", DefaultConfigDir, "ckpt.toml and ckpt.toml.d/*.toml; flags override them")
	fs.StringVar(&f.metricsDir, "metrics-dir", checkpoint.DefaultMetricsDir, "node_exporter textfile directory for run metrics (skipped if absent)")
}

// backends loads every registered backend that can run here.
func (f *engineFlags) backends(ctx context.Context, log *slog.Logger) ([]hypervisors.Backend, error) {
	return f.backendsWith(ctx, log, nil)
}

// backendsWith loads the backends with more settings per backend.
func (f *engineFlags) backendsWith(ctx context.Context, log *slog.Logger, extra map[string]map[string]any) ([]hypervisors.Backend, error) {
	// A skipped backend is logged by Load and listed by the plan; a host
	// without libvirt, say, is not a warning.
	bs, skipped, err := hypervisors.Load(ctx, f.backend.configs(extra), log)
	f.skipped = skipped
	return bs, err
}

// start is the shared start of the engine verbs: the region check, the
// context with --timeout, the logger and the loaded backends.
func (f *engineFlags) start(cmd *cobra.Command, g *globals, needRegion bool) (context.Context, context.CancelFunc, *slog.Logger, []hypervisors.Backend, error) {
	if err := f.applyConfig(cmd); err != nil {
		return nil, nil, nil, nil, err
	}
	if needRegion {
		if err := f.needRegion(); err != nil {
			return nil, nil, nil, nil, err
		}
	}
	ctx, cancel := g.context(cmd)
	log := g.logger()
	bs, err := f.backends(ctx, log)
	if err != nil {
		cancel()
		return nil, nil, nil, nil, err
	}
	// The caller's cancel also closes the backends' connections.
	done := func() {
		hypervisors.Close(bs)
		cancel()
	}
	return ctx, done, log, bs, nil
}

// applyConfig reads the config files: the top-level keys set the flags
// the command line did not, the backends' tables go to the backends.
func (f *engineFlags) applyConfig(cmd *cobra.Command) error {
	if f.configured {
		return nil // once: slice flags would take a config list twice
	}
	f.configured = true
	cfg, err := loadConfig(f.configDir)
	if err == nil {
		cfg, err = f.backend.setTables(cfg)
	}
	if err == nil {
		err = applyConfig(cmd.Flags(), cfg)
	}
	if err != nil {
		return usageError{err}
	}
	return nil
}

func (f *engineFlags) needRegion() error {
	if f.region == "" && !f.regionOptional {
		return usageError{errors.New("--region is required")}
	}
	return nil
}

// kernelTarget resolves the kernel to kexec into (update.Target).
func kernelTarget(version string) (kexec.Image, error) {
	_, img, err := update.Target(version)
	return img, err
}

// targetFlags choose the kernel suspend-all kexecs into (plan checks it).
type targetFlags struct {
	kernel    string
	noKexec   bool
	set, drop []string
}

func (t *targetFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&t.kernel, "kernel", "", "kernel version (or vmlinuz path) to boot (default: the bootloader's default entry, GRUB or systemd-boot)")
	fs.BoolVar(&t.noKexec, "no-kexec", false, "stop after the commit (for a soft-reboot or a full reboot with a disk region)")
	t.addCmdline(fs)
}

// addCmdline declares the flags that edit the next kernel's command line.
func (t *targetFlags) addCmdline(fs *pflag.FlagSet) {
	fs.StringSliceVar(&t.set, "cmdline-set", nil, "key=value parameters of the next kernel's command line that replace the running one's")
	fs.StringSliceVar(&t.drop, "cmdline-drop", nil, "parameter keys to remove from the next kernel's command line")
}

// image is the kernel to kexec into, nil with --no-kexec. Its command line
// is the running one (keeping the region's memmap=) with the overrides.
func (t *targetFlags) image() (*kexec.Image, error) {
	if t.noKexec {
		return nil, nil
	}
	img, err := kernelTarget(t.kernel)
	if err != nil {
		return nil, err
	}
	img.Cmdline = kexec.EditCmdline(img.Cmdline, t.set, t.drop)
	return &img, nil
}

// suspendRequest is what suspendAll does: into img (nil: no kexec), then
// after (a soft-reboot or reboot command) when it is set.
type suspendRequest struct {
	img               *kexec.Image
	fleet             *fleetlock.Config
	preDump, loadOnly bool
}

// suspendAll plans, loads the kernel, suspends every workload and hands
// off: kexec into req.img, or nothing (--no-kexec).
func suspendAll(cmd *cobra.Command, g *globals, f *engineFlags, req suspendRequest) error {
	ctx, cancel, opts, err := f.suspendOptions(cmd, g, req)
	if err != nil {
		return err
	}
	defer cancel()
	_, err = checkpoint.SuspendAndHandoff(ctx, opts, g.handoff(cmd, f, checkpoint.Handoff{Kexec: req.img, LoadOnly: req.loadOnly}))
	return err
}

// suspendOptions are the engine options of a suspend.
func (f *engineFlags) suspendOptions(cmd *cobra.Command, g *globals, req suspendRequest) (context.Context, context.CancelFunc, checkpoint.Options, error) {
	ctx, cancel, log, bs, err := f.start(cmd, g, true)
	if err != nil {
		return nil, nil, checkpoint.Options{}, err
	}
	opts := checkpoint.Options{Region: f.region, Backends: bs, Skipped: f.skipped, Concurrency: f.concurrency, Only: f.only,
		Journal: f.journal, PreDump: req.preDump, Logger: log, Events: g.events(cmd.OutOrStdout(), log),
		Attributes: map[string]string{}, FleetLock: req.fleet}
	return ctx, cancel, opts, nil
}

// printWorkloads prints each workload's bytes, frozen time (its freeze
// to the commit, or to its thaw in a dry run) and dump rate.
func printWorkloads(w io.Writer, res *checkpoint.Result) {
	for _, wr := range res.Workloads {
		rate := 0.0
		if wr.DumpS > 0 {
			rate = float64(wr.Bytes) / wr.DumpS / 1e9
		}
		fmt.Fprintf(w, "  %-40s %10s  frozen %.2fs  dump %.2fs  %.2f GB/s\n", printable(wr.Key), memregion.HumanBytes(wr.Bytes), wr.FrozenS, wr.DumpS, rate)
	}
}

// handoff is h with the CLI's metrics directory and the result printed
// at the commit.
func (g *globals) handoff(cmd *cobra.Command, f *engineFlags, h checkpoint.Handoff) checkpoint.Handoff {
	h.MetricsDir = f.metricsDir
	h.OnCommit = func(res *checkpoint.Result) {
		g.print(cmd.OutOrStdout(), res, func(w io.Writer) {
			fmt.Fprintf(w, "committed %d workloads, %s, at %.2f GB/s with %d at once; %s\n", len(res.Workloads),
				memregion.HumanBytes(res.Bytes), res.GBps, res.Concurrency, extraRAM(res))
			printWorkloads(w, res)
		})
	}
	return h
}

func newSuspendAllCommand(g *globals) *cobra.Command {
	var f engineFlags
	var target targetFlags
	var fleet fleetFlags
	var loadOnly, preDump bool
	c := &cobra.Command{
		Use:   "suspend-all",
		Short: "Freeze every workload, dump them into the region, commit, and kexec into the new kernel",
		Long: `suspend-all plans (nothing is touched if the plan finds a problem), loads the
target kernel, freezes every container and VM, dumps them in parallel into the region,
seals the manifest (the commit point), ends the originals and kexecs into the target
kernel. Any failure before the commit point thaws every workload on this kernel.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			img, err := target.image()
			if err != nil {
				return err
			}
			return suspendAll(cmd, g, &f, suspendRequest{img: img, fleet: fleet.config(), preDump: preDump, loadOnly: loadOnly})
		},
	}
	f.add(c.Flags())
	target.add(c.Flags())
	fleet.add(c.Flags())
	c.Flags().BoolVar(&loadOnly, "load-only", false, "load the kernel but do not execute it")
	c.Flags().BoolVar(&preDump, "pre-dump", true, "copy memory ahead of the freeze where backends can")
	return c
}

func newPlanCommand(g *globals) *cobra.Command {
	var f engineFlags
	var target targetFlags
	c := &cobra.Command{
		Use:   "plan",
		Short: "Dry run: what suspend-all would freeze, how many bytes, and what blocks it",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel, log, bs, err := f.start(cmd, g, true)
			if err != nil {
				return err
			}
			defer cancel()
			img, kerr := target.image()
			p, perr := checkpoint.NewPlan(ctx, checkpoint.Options{Region: f.region, Backends: bs, Skipped: f.skipped, Only: f.only, Journal: f.journal,
				Concurrency: f.concurrency, Kexec: img, Logger: log})
			g.print(cmd.OutOrStdout(), p, func(w io.Writer) {
				fmt.Fprintf(w, "%d workloads, %s to dump; region %s free of %s\n", len(p.Workloads), memregion.HumanBytes(p.Bytes),
					memregion.HumanBytes(p.RegionFree), memregion.HumanBytes(p.RegionTotal))
				for _, pl := range p.Workloads {
					fmt.Fprintf(w, "  %-40s %-12s %10s  %s\n", pl.Key, pl.Workload.Kind, memregion.HumanBytes(pl.Bytes), pl.Problem)
				}
				fmt.Fprintf(w, "backends: %s\n", strings.Join(p.ActiveBackends, ", "))
				for _, name := range slices.Sorted(maps.Keys(p.SkippedBackends)) {
					fmt.Fprintf(w, "  %s not active: %s\n", name, p.SkippedBackends[name])
				}
				if p.EstimateBasis != "" {
					fmt.Fprintf(w, "estimated frozen time %.1fs (%s)\n", p.EstimatedFrozenS, p.EstimateBasis)
				}
				if kerr != nil {
					fmt.Fprintf(w, "kexec: %v\n", kerr)
				} else if img == nil {
					fmt.Fprintln(w, "no kexec: suspend-all --no-kexec stops after the commit")
				} else {
					initrd := img.Initrd
					if initrd == "" {
						initrd = "none"
					}
					fmt.Fprintf(w, "kexec into %s (initrd %s)\n  command line: %s\n", img.Kernel, initrd, img.Cmdline)
				}
				for _, warn := range p.Warnings {
					fmt.Fprintln(w, "warning:", warn)
				}
			})
			if kerr != nil {
				var pe *checkpoint.PlanError
				if !errors.As(perr, &pe) {
					pe = &checkpoint.PlanError{}
				}
				pe.Problems = append(pe.Problems, kerr.Error())
				perr = pe
			}
			return perr
		},
	}
	f.add(c.Flags())
	target.add(c.Flags())
	return c
}

func newResumeAllCommand(g *globals) *cobra.Command {
	var f engineFlags
	var order []string
	var keep, early, ifCommitted bool
	c := &cobra.Command{
		Use:   "resume-all",
		Short: "Verify the region and resume every suspended workload, then release the region",
		Long: `resume-all verifies the region, restores every workload of its committed checkpoint
in parallel (in waves with --order), and releases the region once every workload is back.
A workload that fails keeps its images; run resume-all (or resume ID) again to retry.

resume-all --early is the first step at boot (ckpt-resume-early.service, before the
network and the usual services): it reads the manifest and has each backend prepare the
boot for the restore, e.g. keep the TCP peers of suspended workloads from being reset and
the pids of process trees free. It restores nothing. Without a committed checkpoint both
do nothing.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if early || ifCommitted {
				nothing, err := bootRegion(cmd, &f)
				if err != nil {
					return err
				}
				if nothing && early {
					fmt.Fprintln(cmd.OutOrStdout(), "no committed checkpoint: nothing to prepare")
					return nil
				}
				if nothing {
					fmt.Fprintln(cmd.OutOrStdout(), "no committed checkpoint: nothing to resume")
					// The network is up (ckpt-resume.service): a crashed
					// update's reboot slot goes back.
					if err := giveStaleSlot(cmd.Context(), f.journal); err != nil {
						return fmt.Errorf("the reboot slot of an earlier update is still held: %w", err)
					}
					return nil
				}
			}
			if early {
				return runPrepare(cmd, g, &f)
			}
			return runResume(cmd, g, &f, f.only, order, keep)
		},
	}
	f.addRestore(c.Flags())
	c.Flags().BoolVar(&ifCommitted, "if-committed", false, "do nothing, successfully, when the region holds no committed checkpoint (a normal boot)")
	c.Flags().BoolVar(&early, "early", false, "only prepare the boot for the restore (run before the network starts)")
	f.add(c.Flags())
	c.Flags().StringSliceVar(&order, "order", nil, "restore these first, in waves: backend/id, kind (vm, container) or backend")
	c.Flags().BoolVar(&keep, "keep-region", false, "keep the checkpoint even when every workload is back")
	return c
}

// addRestore adds the flags of how workloads are restored.
func (f *engineFlags) addRestore(fs *pflag.FlagSet) {
	fs.BoolVar(&f.hugePages, "huge-pages", false, "restore with transparent huge pages always on (from madvise, put back after): faster on such hosts, may take more memory")
	fs.StringSliceVar(&f.lazy, "lazy", nil, "restore lazily: the workload runs before its memory is back, which follows as it is touched "+
		"(--lazy for all, --lazy=backend/id,kind,backend for some; containers of the criu backend; the others are restored in full)")
	fs.Lookup("lazy").NoOptDefVal = "all"
}

func newResumeCommand(g *globals) *cobra.Command {
	var f engineFlags
	c := &cobra.Command{
		Use:   "resume BACKEND/ID...",
		Short: "Retry the restore of some workloads of the checkpoint",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError{errors.New("name at least one workload (backend/id)")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error { return runResume(cmd, g, &f, args, nil, false) },
	}
	f.add(c.Flags())
	f.addRestore(c.Flags())
	return c
}

// partialError exits with exitPartial.
type partialError struct{ err error }

func (e partialError) Error() string { return e.err.Error() }
func (e partialError) Unwrap() error { return e.err }

// regionCommitted reports whether the region holds a committed checkpoint.
func regionCommitted(path string) (bool, error) {
	waitRegion(context.Background(), path)
	r, err := memregion.Open(path, memregion.Options{})
	if err != nil {
		return false, err
	}
	defer r.Close()
	return r.Sealed()
}

// bootRegion picks the region the boot units resume: the one the
// committed journal names, wherever the update put it (a soft-reboot's
// in /run, a kexec-less one's on disk), else --region. It says nothing is
// to be done when that region holds no committed checkpoint, or is not
// there at all with nothing committed in the journal (a host whose region
// is not reserved): a normal boot. A committed checkpoint whose region is
// gone is an error that says so.
func bootRegion(cmd *cobra.Command, f *engineFlags) (nothing bool, err error) {
	if err := f.applyConfig(cmd); err != nil {
		return false, err
	}
	committed, err := journal.CommittedRegion(f.journal)
	if err != nil {
		return false, fmt.Errorf("the journal: %w (a committed checkpoint may be recorded there; fix or remove it)", err)
	}
	if committed != "" && committed != f.region {
		fmt.Fprintf(cmd.ErrOrStderr(), "the journal names the committed checkpoint in %s; resuming that one (not --region %s)\n", committed, f.region)
		if err := cmd.Flags().Set("region", committed); err != nil {
			return false, err
		}
	}
	if committed == "" && absent(f.region) {
		return true, nil
	}
	if committed != "" && !strings.HasPrefix(filepath.Clean(committed), "/dev/") && absent(committed) {
		return false, fmt.Errorf("the journal (%s) records a committed checkpoint in %s, which is gone: that region did not survive this boot, and the workloads it held are lost. Start them afresh, then remove %s", f.journal, committed, f.journal)
	}
	sealed, err := regionCommitted(f.region)
	return err == nil && !sealed, nil
}

// absent says that nothing is at path.
func absent(path string) bool {
	_, err := os.Lstat(path)
	return errors.Is(err, os.ErrNotExist)
}

// waitRegion gives a region device that its driver is still probing at
// boot (nd_pmem after modprobe) a few seconds to appear. Files and
// directories do not appear late.
func waitRegion(ctx context.Context, path string) {
	if !strings.HasPrefix(filepath.Clean(path), "/dev/") {
		return
	}
	for i := 0; i < 100 && ctx.Err() == nil; i++ {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func runPrepare(cmd *cobra.Command, g *globals, f *engineFlags) error {
	ctx, cancel, log, bs, err := f.start(cmd, g, true)
	if err != nil {
		return err
	}
	defer cancel()
	waitRegion(ctx, f.region)
	res, err := restore.Prepare(ctx, f.region, bs, log)
	if res != nil {
		g.print(cmd.OutOrStdout(), res, func(w io.Writer) {
			if !res.Committed {
				fmt.Fprintln(w, "no committed checkpoint: nothing to prepare")
				return
			}
			fmt.Fprintf(w, "prepared the boot for %d workloads, %d failed\n", len(res.Prepared), len(res.Failed))
		})
	}
	return err
}

func runResume(cmd *cobra.Command, g *globals, f *engineFlags, only, order []string, keep bool) error {
	ctx, cancel, log, bs, err := f.start(cmd, g, true)
	if err != nil {
		return err
	}
	defer cancel()
	waitRegion(ctx, f.region)
	res, err := restore.ResumeAll(ctx, restore.Options{Region: f.region, Backends: bs, Concurrency: f.concurrency, Order: order,
		Only: only, KeepRegion: keep, HugePages: f.hugePages, Lazy: f.lazy, State: f.state, Journal: f.journal, Logger: log, Events: g.events(cmd.OutOrStdout(), log)})
	if res != nil {
		m := &checkpoint.Metrics{}
		m.Gauge("ckpt_resume_restored", "workloads restored by the last resume", float64(len(res.Restored)))
		m.Gauge("ckpt_resume_failures", "workloads the last resume could not restore", float64(len(res.Failed)))
		m.Gauge("ckpt_resume_seconds", "duration of the last resume", res.Seconds)
		m.Gauge("ckpt_resume_bytes", "bytes of the checkpoint the last resume restored from", float64(res.Bytes))
		path := res.UpdatePath
		if path == "" {
			path = "suspend-all"
		}
		m.Gauge("ckpt_update_info", "the last update: its path and target kernel", 1, "path", path, "target", res.Target)
		for _, w := range res.Restored {
			if w.BlackoutS > 0 {
				m.Gauge("ckpt_workload_blackout_seconds", "from a workload's freeze by the suspend to the end of its restore", w.BlackoutS, "workload", w.Key)
			}
		}
		if merr := m.WriteFile(f.metricsDir, "ckpt_resume"); merr != nil {
			log.Warn("metrics", "err", merr)
		}
		g.print(cmd.OutOrStdout(), res, func(w io.Writer) {
			fmt.Fprintf(w, "resumed %d, failed %d, already resumed %d in %.2fs; region released: %v\n",
				len(res.Restored), len(res.Failed), len(res.Skipped), res.Seconds, res.Released)
			if res.SlotGiven {
				fmt.Fprintln(w, "gave back the fleet lock's reboot slot")
			}
			for _, r := range res.Failed {
				fmt.Fprintf(w, "  FAILED %s: %s\n", printable(r.Key), escape(r.Error, true))
			}
		})
	}
	if errors.Is(err, restore.ErrPartial) {
		return partialError{err}
	}
	return err
}

func newRecoverCommand(g *globals) *cobra.Command {
	var f engineFlags
	c := &cobra.Command{
		Use:   "recover",
		Short: "Bring back, on this boot, every workload a crashed or killed suspend-all left frozen or ended",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel, log, bs, err := f.start(cmd, g, false)
			if err != nil {
				return err
			}
			defer cancel()
			back, err := checkpoint.RecoverWith(ctx, checkpoint.RecoverOptions{Journal: f.journal, ResumeState: f.state, Backends: bs, Logger: log})
			g.print(cmd.OutOrStdout(), map[string]any{"running": back}, func(w io.Writer) {
				if len(back) == 0 && err == nil {
					fmt.Fprintln(w, "nothing to recover")
				}
				for _, k := range back {
					fmt.Fprintln(w, "running again:", k)
				}
			})
			return err
		},
	}
	f.add(c.Flags())
	return c
}

func newStatusCommand(g *globals) *cobra.Command {
	var f engineFlags
	c := &cobra.Command{
		Use:   "status",
		Short: "Region state, loaded kexec kernel, journal, workloads, and whether the host asks for a reboot",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := g.context(cmd)
			defer cancel()
			log := g.logger()
			if err := f.applyConfig(cmd); err != nil {
				return err
			}
			st := map[string]any{}
			if f.region != "" {
				// Read-only: status changes nothing, and works on a write-protected device.
				if r, err := memregion.Open(f.region, memregion.Options{ReadOnly: true}); err != nil {
					st["region"] = err.Error()
				} else {
					sealed, _ := r.Sealed()
					info := map[string]any{"path": f.region, "kind": r.Kind(), "committed": sealed}
					if m, err := r.Manifest(); err == nil {
						info["workloads"], info["bytes"], info["kernel"], info["created"] = len(m.Workloads), m.TotalBytes(), m.Kernel, m.Created
					}
					st["region"] = info
					r.Close()
				}
			}
			loaded, err := kexec.Loaded()
			st["kexec_loaded"] = loaded && err == nil
			if j, _ := checkpoint.ReadJournal(f.journal); j != nil {
				st["journal"] = j
			}
			if rs := restore.ReadState(f.state); rs != nil {
				st["resume"] = rs
			}
			if held, err := fleetlock.Held(fleetlock.Record(f.journal)); held != nil || err != nil {
				st["fleet_lock_held"] = map[string]any{"lock": held, "error": errString(err)}
			}
			_, err = os.Stat("/var/run/reboot-required")
			st["reboot_required"] = err == nil
			if ksta, cur, exp := checkpoint.KernelStatus(); ksta != "" {
				st["needrestart_kernel"] = map[string]string{"status": ksta, "running": cur, "expected": exp}
			}
			if b, err := os.ReadFile("/var/run/reboot-required.pkgs"); err == nil {
				st["reboot_required_pkgs"] = strings.Fields(string(b))
			}
			var ws []hypervisors.Workload
			if bs, err := f.backends(ctx, log); err == nil {
				for _, b := range bs {
					if found, err := b.Discover(ctx); err == nil {
						ws = append(ws, found...)
					}
				}
			}
			st["workloads"] = ws
			return g.print(cmd.OutOrStdout(), st, func(w io.Writer) {
				b, _ := json.MarshalIndent(st, "", "  ")
				fmt.Fprintln(w, string(b))
			})
		},
	}
	f.add(c.Flags())
	return c
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
