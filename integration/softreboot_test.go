package integration

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// debian13Disk is the cached Debian 13 image (systemd 257, which has
// soft-reboot) that hack/guest-image.sh debian13 builds, and its kernel.
// No memmap=: a host with no reserved region.
func debian13Disk(t *testing.T) (guestDisk, string) {
	t.Helper()
	dir := filepath.Join(cacheDir(), "guest13")
	img := filepath.Join(dir, "debian13.img")
	b, err := os.ReadFile(filepath.Join(dir, "VERSIONS"))
	if _, serr := os.Stat(img); serr != nil || err != nil {
		missing(t, "no Debian 13 guest image under %s: run hack/guest-image.sh debian13", dir)
	}
	kernel := ""
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "KERNEL="); ok {
			kernel = v
		}
	}
	return guestDisk{img: img, boot: filepath.Join(dir, "boot"), cmdline: "root=/dev/vda rw console=ttyS0 quiet"}, kernel
}

// softReboots is systemd's count of soft-reboots in this boot.
func (g *sysGuest) softReboots() int {
	g.t.Helper()
	n, err := strconv.Atoi(strings.TrimSpace(g.MustSh(time.Minute, "systemctl show -p SoftRebootsCount --value")))
	if err != nil {
		g.t.Fatalf("SoftRebootsCount: %v", err)
	}
	return n
}

// TestSoftRebootUpdate is ckpt update's userspace path where systemd has
// soft-reboot, end to end, on a real Debian 13 host (systemd 257) in a
// QEMU guest with no reserved region: the same workloads as
// TestKernelUpdate (a runc container whose TCP client on the test host
// keeps talking, a systemd service as a process tree, a VM). A library
// upgrade asks for a restart while the bootloader's kernel runs:
// ckpt update --check names the soft-reboot path; ckpt update (no
// --region) suspends every workload into a region it makes in /run and
// runs systemctl soft-reboot; ckpt-resume.service, in the new userspace,
// finds the checkpoint through the journal and resumes it. Same kernel,
// same boot id, one more soft-reboot, and every workload goes on.
func TestSoftRebootUpdate(t *testing.T) {
	t.Parallel()
	d, kernel := debian13Disk(t)
	g := bootGuestDisk(t, d, kernel, e2eCtrPort, e2eTreePort)
	if v := g.MustSh(time.Minute, "systemctl --version | head -1"); !strings.HasPrefix(v, "systemd 25") && !strings.HasPrefix(v, "systemd 26") {
		t.Fatalf("the Debian 13 guest runs %q; want systemd ≥ 254", v)
	}
	// The package alone: no region is reserved or configured.
	s := startE2E(t, g, "set -e; dpkg -i /mnt/host/ckpt_*.deb; systemctl is-enabled ckpt-resume-early.service ckpt-resume.service")
	// The container comes back lazily in the new userspace. (Not yet in
	// TestKernelUpdate: one CI run's 6.12 guest kernel panicked in CRIU's
	// ptrace breakpoint path during a lazy boot-time restore; see README.)
	s.lazyAtBoot()

	if res := g.Sh(time.Minute, "ckpt update --check"); res.Exit != 4 {
		t.Fatalf("ckpt update --check with nothing pending: exit %d (want 4)\n%s%s", res.Exit, res.Stdout, res.Stderr)
	}
	g.MustSh(time.Minute, "echo '*** System restart required ***' >/run/reboot-required && echo libc6 >/run/reboot-required.pkgs")
	out := g.MustSh(time.Minute, "ckpt update --check --json")
	var pc struct {
		Path       string `json:"path"`
		Reason     string `json:"reason"`
		SoftReboot bool   `json:"soft_reboot"`
		Steps      []string
	}
	if err := json.Unmarshal([]byte(out), &pc); err != nil || pc.Path != "userspace" || !pc.SoftReboot {
		t.Fatalf("ckpt update --check --json = %+v, %v; want the userspace path by soft-reboot\n%s", pc, err, out)
	}
	t.Logf("precheck: %s: %s; %s", pc.Path, pc.Reason, strings.Join(pc.Steps, "; "))

	g.MustSh(time.Minute, "mkdir -p /var/lib/prometheus/node-exporter")
	const name = "same kernel, soft-reboot (Debian 13, region in /run)"
	soft := g.softReboots()
	r := &run{before: s.state(), start: time.Now(), sameBoot: true}
	g.Start("(ckpt update) >/var/log/ckpt-e2e-suspend.log 2>&1; echo exit $? >>/var/log/ckpt-e2e-suspend.log")
	s.waitSoftReboot(r, soft)
	s.awaitResume(r, true)
	s.check(r, kernel, "/run/ckpt/region", name)
	if n := g.softReboots(); n != soft+1 {
		t.Fatalf("soft-reboots: %d before, %d after; want one", soft, n)
	}
	if res := g.Sh(time.Minute, "test -e /run/reboot-required"); res.Exit == 0 {
		t.Fatal("/run/reboot-required is still there after the update it asked for")
	}
	// The resume's metrics name the path taken (node_exporter's textfile
	// directory, made before the update).
	if prom := g.MustSh(time.Minute, "cat /var/lib/prometheus/node-exporter/ckpt_resume.prom"); !strings.Contains(prom, `ckpt_update_info{path="userspace"`) {
		t.Fatalf("the resume's metrics do not record the userspace path:\n%s", prom)
	}
	if res := g.Sh(time.Minute, "ckpt update --check"); res.Exit != 4 {
		t.Fatalf("ckpt update --check after the update: exit %d (want 4)\n%s%s", res.Exit, res.Stdout, res.Stderr)
	}
	t.Logf("a soft-reboot update:\n| update | container's blackout, seen by its client | freeze → committed and ended | → soft-reboot, resume-all starts | restore | container freeze → restored | service | VM |\n|---|---|---|---|---|---|---|---|\n%s",
		strings.Join(s.table, "\n"))
}

// waitSoftReboot waits until the guest has soft-rebooted once more than
// soft times and its agent answers, or fails as soon as the update's log
// ends in an error.
func (s *e2eSuite) waitSoftReboot(r *run, soft int) {
	s.t.Helper()
	for deadline := time.Now().Add(10 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		res, err := s.g.agent.exec(ctx, "systemctl show -p SoftRebootsCount --value; grep '^exit [1-9]' /var/log/ckpt-e2e-suspend.log && cat /var/log/ckpt-e2e-suspend.log")
		cancel()
		if err != nil || res.Exit < 0 {
			continue
		}
		first, rest, _ := strings.Cut(res.Stdout, "\n")
		if n, err := strconv.Atoi(strings.TrimSpace(first)); err == nil && n > soft {
			r.up = time.Since(r.start)
			s.t.Logf("guest soft-rebooted (%d) after %s", n, r.up.Round(time.Second))
			return
		}
		if strings.TrimSpace(rest) != "" {
			s.t.Fatalf("no soft-reboot: %s", rest)
		}
	}
	s.t.Fatalf("the guest did not soft-reboot within 10 minutes; console:\n%s", tail(readFile(s.g.Console), 60))
}
