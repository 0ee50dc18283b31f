package update

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ckpt-dev/ckpt/checkpoint/kexec"
	"golang.org/x/sys/unix"
)

// Path is an update path.
type Path string

// The update paths, cheapest first.
const (
	PathNone        Path = "none"        // nothing asks for a reboot
	PathLivepatched Path = "livepatched" // the running kernel is live-patched for what is pending
	PathUserspace   Path = "userspace"   // the kernel is unchanged; userspace must restart
	PathKexec       Path = "kexec"       // a new kernel, through kexec
	PathReboot      Path = "reboot"      // kexec impossible: a full reboot with a disk region
)

// MinSoftReboot is the first systemd with systemctl soft-reboot.
const MinSoftReboot = 254

// Facts are what the precheck looks at (HostFacts reads them).
type Facts struct {
	Running string `json:"running_kernel"`
	// RebootRequired is /run/reboot-required, with the packages of
	// /run/reboot-required.pkgs.
	RebootRequired bool     `json:"reboot_required"`
	RebootPackages []string `json:"reboot_required_packages,omitempty"`
	// Livepatches are the live patches the kernel has applied
	// (/sys/kernel/livepatch). LivepatchCovers is set only when the
	// host's livepatch tool says they cover what is pending: never guessed.
	Livepatches     []string `json:"livepatches,omitempty"`
	LivepatchCovers bool     `json:"livepatch_covers,omitempty"`
	// LivepatchEffective is the kernel version the livepatch tool says
	// the running kernel is patched up to (Ksplice's uptrack-uname -r): a
	// target of that version is covered. "" where no tool says.
	LivepatchEffective string `json:"livepatch_effective_kernel,omitempty"`
	SystemdVersion     int    `json:"systemd_version,omitempty"`
	// KexecProblem is why kexec cannot work here ("" when it can).
	KexecProblem string `json:"kexec_problem,omitempty"`
}

// Precheck says which update path applies, why, and what it will do.
type Precheck struct {
	Path   Path   `json:"path"`
	Reason string `json:"reason"`
	Facts  Facts  `json:"facts"`
	Target Kernel `json:"target"`
	// SoftReboot says the userspace path restarts userspace alone
	// (systemctl soft-reboot); without it (systemd < 254) it kexecs into
	// the same kernel.
	SoftReboot bool     `json:"soft_reboot,omitempty"`
	Steps      []string `json:"steps"`
}

// Due says whether an update has to run (kured's sentinel).
func (p Precheck) Due() bool { return p.Path != PathNone && p.Path != PathLivepatched }

// Check picks the update path for target on a host with facts f.
func Check(f Facts, target Kernel) Precheck {
	p := Precheck{Facts: f, Target: target}
	switch {
	case target.Version != f.Running && (f.LivepatchCovers || f.LivepatchEffective != "" && f.LivepatchEffective == target.Version):
		by := strings.Join(f.Livepatches, ", ")
		if f.LivepatchEffective == target.Version {
			by = "effective kernel " + f.LivepatchEffective
		}
		p.Path, p.Reason = PathLivepatched, fmt.Sprintf("%s is pending, and the livepatch tool reports the running %s patched for it (%s)", target.Version, f.Running, by)
		p.Steps = []string{"No action required"}
	case target.Version != f.Running && f.KexecProblem == "":
		p.Path, p.Reason = PathKexec, fmt.Sprintf("a new kernel: %s is running, the bootloader's default is %s (%s)", f.Running, target.Version, target.Source)
		p.Steps = []string{"suspend every workload into the region", "kexec into " + target.Version, "resume every workload at boot (ckpt-resume.service)"}
	case target.Version != f.Running:
		p.Path, p.Reason = PathReboot, fmt.Sprintf("a new kernel (%s → %s), but kexec is impossible here: %s", f.Running, target.Version, f.KexecProblem)
		p.Steps = []string{"suspend every workload into a region on disk", "reboot into " + target.Version, "resume every workload at boot (ckpt-resume.service)"}
	case f.RebootRequired:
		p.Path = PathUserspace
		p.Reason = fmt.Sprintf("the kernel (%s) is unchanged, but a restart is required", f.Running)
		if len(f.RebootPackages) > 0 {
			p.Reason += " by " + strings.Join(f.RebootPackages, ", ")
		}
		p.SoftReboot = f.SystemdVersion >= MinSoftReboot
		switch {
		case p.SoftReboot:
			p.Steps = []string{"suspend every workload into a region in /run", "systemctl soft-reboot (userspace only)", "resume every workload (ckpt-resume.service)"}
		case f.KexecProblem == "":
			p.Reason += fmt.Sprintf("; systemd %d has no soft-reboot (%d+), so kexec into the same kernel", f.SystemdVersion, MinSoftReboot)
			p.Steps = []string{"suspend every workload into the region", "kexec into " + f.Running, "resume every workload at boot (ckpt-resume.service)"}
		default:
			p.Path = PathReboot
			p.Reason += fmt.Sprintf("; systemd %d has no soft-reboot and kexec is impossible (%s)", f.SystemdVersion, f.KexecProblem)
			p.Steps = []string{"suspend every workload into a region on disk", "reboot", "resume every workload at boot (ckpt-resume.service)"}
		}
	default:
		p.Path, p.Reason = PathNone, fmt.Sprintf("No action required: %s runs, it is the bootloader's default, and nothing asks for a restart", f.Running)
		p.Steps = []string{"No action required"}
	}
	return p
}

// HostFacts reads the facts of this host (root "/" but for tests).
func HostFacts(root string) Facts {
	f := Facts{Running: RunningKernel()}
	if _, err := os.Stat(filepath.Join(root, "run/reboot-required")); err == nil {
		f.RebootRequired = true
		if b, err := os.ReadFile(filepath.Join(root, "run/reboot-required.pkgs")); err == nil {
			f.RebootPackages = strings.Fields(string(b))
		}
	}
	lps, _ := filepath.Glob(filepath.Join(root, "sys/kernel/livepatch/*/enabled"))
	for _, p := range lps {
		if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == "1" {
			f.Livepatches = append(f.Livepatches, filepath.Base(filepath.Dir(p)))
		}
	}
	f.LivepatchEffective = livepatchEffective()
	f.SystemdVersion = systemdVersion()
	if err := kexec.Check(); err != nil {
		f.KexecProblem = err.Error()
	}
	return f
}

// livepatchEffective asks Ksplice's uptrack-uname, the one livepatch tool
// that says which kernel version the running one is patched up to
// (kpatch and canonical-livepatch list patches, not the version they
// bring: those prove nothing about a pending kernel). "" without it.
func livepatchEffective() string {
	out, err := exec.Command("uptrack-uname", "-r").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// RunningKernel is uname -r.
func RunningKernel() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// systemdVersion is systemctl --version's number (0 without systemd).
func systemdVersion() int {
	out, err := exec.Command("systemctl", "--version").Output()
	if err != nil {
		return 0
	}
	return parseSystemdVersion(string(out))
}

// parseSystemdVersion reads "systemd 252 (252.36-1~deb12u1)".
func parseSystemdVersion(s string) int {
	f := strings.Fields(s)
	if len(f) < 2 || f[0] != "systemd" {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// ClearRebootRequired removes what asked for the reboot once the update
// it asked for is done: /run/reboot-required(.pkgs), which survive a
// soft-reboot (a kexec or a reboot empties /run anyway).
func ClearRebootRequired(root string) error {
	for _, p := range []string{"run/reboot-required", "run/reboot-required.pkgs"} {
		if err := os.Remove(filepath.Join(root, p)); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	return nil
}
