package checkpoint

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"slices"
	"strings"

	"github.com/ckpt-dev/ckpt/checkpoint/kexec"
)

// HostWarnings lists what on this host would fight a suspend-all: a
// kernel already loaded for kexec (with one loaded, "systemctl reboot"
// silently kexecs into it), libvirt's domains and Docker's containers
// when no active backend suspends them, and kubelet, which recreates pods
// at boot. active names the backends that look for
// workloads.
func HostWarnings(active []string) []string {
	var ws []string
	if loaded, err := kexec.Loaded(); err == nil && loaded {
		ws = append(ws, "a kernel is already loaded for kexec: a plain reboot would kexec into it (ckpt kexec unload)")
	}
	// With the libvirt backend active, libvirt-guests is harmless: ckpt
	// saves the domains before the kexec, so at shutdown libvirt-guests
	// finds none running and records none to start at boot, and
	// ckpt-resume.service restores them after libvirtd and before
	// libvirt-guests, with their autostart switched off until then.
	// Without the backend ckpt does not suspend the domains at all.
	if unitEnabled("libvirtd.service") && !slices.Contains(active, "libvirt") {
		fate := "the kexec ends them"
		if unitEnabled("libvirt-guests.service") {
			fate = "libvirt-guests saves them to disk at shutdown (ON_SHUTDOWN) and starts them at boot, outside the region"
		}
		ws = append(ws, "libvirtd.service is enabled but ckpt's libvirt backend is not active (is libvirtd running?): ckpt does not suspend libvirt's domains; "+fate)
	}
	// Likewise the docker backend switches a container's restart policy
	// off while it is in the region; without the backend dockerd's
	// containers are not suspended.
	if unitEnabled("docker.service") && !slices.Contains(active, "docker") {
		ws = append(ws, "docker.service is enabled but ckpt's docker backend is not active (is dockerd running?): ckpt does not suspend Docker's containers; the kexec ends them, and dockerd starts those with a restart policy afresh at boot")
	}
	// containerd's and podman's containers are claimed by their backends
	// alone (the criu backend leaves them be): without those backends
	// they are not suspended either.
	if unitEnabled("containerd.service") && !slices.Contains(active, "containerd") {
		ws = append(ws, "containerd.service is enabled but ckpt's containerd backend is not active (is containerd running?): ckpt does not suspend containerd's containers; the kexec ends them")
	}
	if !slices.Contains(active, "podman") && processRunning("conmon", "libpod") {
		ws = append(ws, "podman's containers run (conmon) but ckpt's podman backend is not active (is podman installed?): ckpt does not suspend them; the kexec ends them")
	}
	if unitEnabled("kubelet.service") {
		ws = append(ws, "kubelet.service is enabled: it recreates pods at boot before resume-all; drain the node first (kubectl drain)")
	}
	// On a systemd host nothing resumes the workloads after the kexec
	// unless the boot units are enabled (the package enables them).
	if _, err := os.Stat("/run/systemd/system"); err == nil {
		for _, unit := range []string{"ckpt-resume-early.service", "ckpt-resume.service"} {
			if !unitEnabled(unit) {
				ws = append(ws, unit+" is not enabled: nothing resumes the workloads at boot (systemctl enable ckpt-resume-early.service ckpt-resume.service)")
			}
		}
	}
	return ws
}

// processRunning says whether a process of this name (comm) runs whose
// command line holds arg ("": any): podman's conmon names libpod's
// paths, CRI-O's does not.
func processRunning(comm, arg string) bool {
	ds, _ := os.ReadDir("/proc")
	for _, d := range ds {
		b, err := os.ReadFile("/proc/" + d.Name() + "/comm")
		if err != nil || strings.TrimSpace(string(b)) != comm {
			continue
		}
		if cl, err := os.ReadFile("/proc/" + d.Name() + "/cmdline"); err == nil && strings.Contains(string(cl), arg) {
			return true
		}
	}
	return false
}

func unitEnabled(unit string) bool {
	out, err := exec.Command("systemctl", "is-enabled", unit).Output()
	return err == nil && strings.TrimSpace(string(out)) == "enabled"
}

// KernelStatus is needrestart's view of the running kernel: "1" current,
// "2" an ABI-compatible upgrade, "3" a new version pending (-b batch
// output, NEEDRESTART-KSTA); "" where needrestart is not installed.
func KernelStatus() (status, running, expected string) {
	out, err := exec.Command("needrestart", "-b", "-k").Output()
	if err != nil && len(out) == 0 {
		return "", "", ""
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ": ")
		if !ok {
			continue
		}
		switch k {
		case "NEEDRESTART-KSTA":
			status = v
		case "NEEDRESTART-KCUR":
			running = v
		case "NEEDRESTART-KEXP":
			expected = v
		}
	}
	return status, running, expected
}
