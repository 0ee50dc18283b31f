package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/ckpt-dev/ckpt/checkpoint/kexec"
	"github.com/ckpt-dev/ckpt/internal/memwatch"
	"github.com/ckpt-dev/ckpt/memregion"
	"github.com/ckpt-dev/ckpt/update"
	"golang.org/x/sys/unix"
)

// Handoff is what follows a committed suspend.
type Handoff struct {
	// Kexec is the kernel to kexec into: loaded before anything is
	// frozen (a kernel that cannot be loaded stops the update with every
	// workload untouched), executed once the checkpoint is committed.
	// Nil: no kexec.
	Kexec *kexec.Image
	// LoadOnly leaves the loaded kernel for a later reboot to execute.
	LoadOnly bool
	// After, without Kexec, runs once the checkpoint is committed: hand
	// the host to systemctl soft-reboot or reboot. Nil: the caller's turn.
	After func() error
	// OnCommit, when set, sees the result before the hand-off (a kexec
	// does not return).
	OnCommit func(*Result)
	// MetricsDir receives the run's metrics (ckpt_suspend.prom; "": none,
	// or where the directory is absent).
	MetricsDir string
}

// SuspendAndHandoff is the whole suspend as ckpt suspend-all runs it: the
// plan (nothing is touched if it finds a problem), the kernel loaded,
// every workload suspended, and the hand-off. With a kexec it returns only
// on failure; a suspend that rolled back unloads the kernel, so that a
// later reboot does not kexec by surprise.
func SuspendAndHandoff(ctx context.Context, opts Options, h Handoff) (*Result, error) {
	opts.Kexec = h.Kexec
	if h.Kexec != nil {
		if opts.Attributes == nil {
			opts.Attributes = map[string]string{}
		}
		opts.Attributes["target_kernel"] = h.Kexec.Kernel
	}
	plan, err := NewPlan(ctx, opts)
	if err != nil {
		return nil, err
	}
	if h.Kexec != nil {
		if err := kexec.Load(*h.Kexec); err != nil {
			return nil, fmt.Errorf("%w; nothing was frozen. To update anyway, %s", err, kexec.Fallback)
		}
	}
	res, err := Suspend(ctx, plan)
	if h.MetricsDir != "" {
		if merr := SuspendMetrics(res, err).WriteFile(h.MetricsDir, "ckpt_suspend"); merr != nil {
			plan.Options.Logger.Warn("metrics", "err", merr)
		}
	}
	if err != nil {
		if h.Kexec != nil && res == nil {
			kexec.Unload()
		}
		return res, err
	}
	if h.OnCommit != nil {
		h.OnCommit(res)
	}
	switch {
	case h.Kexec != nil && !h.LoadOnly:
		return res, kexec.Boot()
	case h.Kexec == nil && h.After != nil:
		return res, h.After()
	}
	return res, nil
}

// ErrRegionLost says the region given does not survive the update path
// that applies (a soft-reboot keeps /run, devices and disks but no other
// tmpfs; a kexec keeps disks and a pmem device whose memmap= the next
// command line keeps; a full reboot keeps only disks).
var ErrRegionLost = errors.New("the region does not survive this update path")

// SoftRebootRegion is the region of a soft-reboot update when none is
// given: a directory in /run, which systemd keeps across a soft-reboot.
// RunUpdate formats it when it is not yet.
const SoftRebootRegion = "/run/ckpt/region"

// RunUpdate is ckpt update past its precheck: it takes pc's path with
// opts (the region, the backends, the fleet lock, …) and h (the metrics,
// OnCommit):
//   - kexec: suspend every workload and kexec into img;
//   - userspace with soft-reboot (systemd ≥ 254): suspend into a region
//     that a soft-reboot keeps (the one given, or SoftRebootRegion in
//     /run), systemctl soft-reboot;
//   - userspace without: kexec into the running kernel again (img's
//     command line);
//   - reboot: a region on disk, suspend, systemctl reboot.
//
// A region the path would lose is refused with ErrRegionLost before
// anything is frozen. The manifest records the path and the target
// (update_path, update_target); ckpt-resume.service resumes every
// workload at boot, from the region the journal names.
func RunUpdate(ctx context.Context, pc update.Precheck, img kexec.Image, opts Options, h Handoff) (*Result, error) {
	if opts.Attributes == nil {
		opts.Attributes = map[string]string{}
	}
	opts.Attributes["update_path"], opts.Attributes["update_target"] = string(pc.Path), pc.Target.Version
	var need func(memregion.Survival) bool
	var path string
	switch {
	case pc.Path == update.PathKexec:
		h.Kexec = &img
		need, path = func(s memregion.Survival) bool { return s.Kexec }, "a kexec"
	case pc.Path == update.PathUserspace && !pc.SoftReboot:
		// The same kernel again: kexec restarts userspace (and the kernel).
		_, same, err := update.Target(pc.Facts.Running)
		if err != nil {
			return nil, err
		}
		same.Cmdline = img.Cmdline
		opts.Attributes["update_target"] = pc.Facts.Running
		h.Kexec = &same
		need, path = func(s memregion.Survival) bool { return s.Kexec }, "a kexec"
	case pc.Path == update.PathUserspace:
		if opts.Region == "" {
			opts.Region = SoftRebootRegion
			if err := formatIfNew(opts.Region); err != nil {
				return nil, err
			}
		}
		if s, err := memregion.Survives(opts.Region); err == nil && s.Medium == "tmpfs /run" {
			opts.GrowRegion = growRun
		}
		opts.Attributes["update_target"] = pc.Facts.Running
		h.Kexec, h.After = nil, func() error { return systemctl("soft-reboot") }
		need, path = func(s memregion.Survival) bool { return s.SoftReboot }, "a soft-reboot"
	case pc.Path == update.PathReboot:
		h.Kexec, h.After = nil, func() error { return systemctl("reboot") }
		need, path = func(s memregion.Survival) bool { return s.Reboot }, "a full reboot"
	default:
		return nil, fmt.Errorf("update path %s: nothing to run", pc.Path)
	}
	if err := regionSurvives(opts.Region, path, need); err != nil {
		return nil, err
	}
	return SuspendAndHandoff(ctx, opts, h)
}

// regionSurvives refuses a region that path (a soft-reboot, a kexec, a
// full reboot) would lose, saying what holds it and what would do.
func regionSurvives(region, path string, need func(memregion.Survival) bool) error {
	if region == "" {
		return fmt.Errorf("%w: no region given", ErrRegionLost)
	}
	s, err := memregion.Survives(region)
	if err != nil {
		return fmt.Errorf("what holds region %s: %w", region, err)
	}
	if need(s) {
		return nil
	}
	hint := "format one on disk (ckpt region format /var/lib/ckpt/region --kind dir) and give --region"
	if path == "a soft-reboot" {
		hint = "give a region in /run (the default: no --region), on a pmem device or on disk"
	}
	return fmt.Errorf("%w: %s (%s) does not survive %s: %s", ErrRegionLost, region, s.Medium, path, hint)
}

// growRun raises /run's size cap so that need bytes fit in it, within
// the RAM available: a soft-reboot keeps /run and no other tmpfs (a tmpfs
// mounted below /run is unmounted with the old userspace: seen on
// systemd 257), and /run's cap (10 or 20 % of RAM) is less than most
// hosts' workloads. The cap stays raised until the next boot; a tmpfs
// takes only the memory of what it holds.
func growRun(need int64) error {
	var st unix.Statfs_t
	if err := unix.Statfs("/run", &st); err != nil {
		return err
	}
	free, size := int64(st.Bavail)*st.Bsize, int64(st.Blocks)*st.Bsize
	// With slack: the region keeps some free for its own metadata, and
	// others write to /run too.
	const slack = 64 << 20
	if free >= need+slack {
		return nil
	}
	// The region will take need bytes of RAM, whatever the cap says.
	if avail := memwatch.Available(); avail > 0 && need > avail*9/10 {
		return fmt.Errorf("the region in /run would take %s of RAM, and only %s is available: give a region on a pmem device or on disk", memregion.HumanBytes(need), memregion.HumanBytes(avail))
	}
	more := need + slack - free
	opt := fmt.Sprintf("remount,size=%dk", (size+more+1023)/1024)
	if out, err := exec.Command("mount", "-o", opt, "/run").CombinedOutput(); err != nil {
		return fmt.Errorf("mount -o %s /run: %w: %s", opt, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// formatIfNew formats a directory region at path unless one is there.
func formatIfNew(path string) error {
	r, err := memregion.Open(path, memregion.Options{ReadOnly: true})
	if err == nil {
		return r.Close()
	}
	if !errors.Is(err, memregion.ErrNotFormatted) {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return memregion.Format(path, memregion.FormatOptions{Kind: memregion.KindDir})
}

// systemctl hands the host to systemd once every workload is committed;
// inhibitors held by others do not stop an update that is under way.
func systemctl(verb string) error {
	out, err := exec.Command("systemctl", "--ignore-inhibitors", verb).CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl %s: %w: %s (the checkpoint is committed: reboot by hand, and ckpt-resume.service resumes it)", verb, err, strings.TrimSpace(string(out)))
	}
	return nil
}
