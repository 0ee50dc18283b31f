package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/internal/workloads"
)

// sysGuest is a real Debian 12 host with systemd, booted under QEMU (TCG)
// from the image hack/guest-image.sh builds and caches. The test drives it
// through qemu-guest-agent (guest-exec of shell commands, as an operator
// would type them), shares files with it over 9p (/mnt/host), and reaches
// its TCP ports through user-net port forwards. QEMU keeps running across
// the guest's kexecs and reboots; the disk is a throw-away qcow2 overlay
// on the cached image.
type sysGuest struct {
	t       *testing.T
	dir     string // sockets, overlay, console
	Share   string // the guest's /mnt/host
	Console string // serial console log
	agent   qga
	cmd     *exec.Cmd
	Fwd     map[int]int // guest port → 127.0.0.1 port on the test host
	kernels guestVersions
}

// guestVersions are the kernel releases installed in the image.
type guestVersions struct{ K61, K612 string }

// guestImage returns the cached image and its kernels, built by
// hack/guest-image.sh (hack/test.sh runs it).
func guestImage(t *testing.T) (img string, v guestVersions) {
	t.Helper()
	dir := filepath.Join(cacheDir(), "guest")
	img = filepath.Join(dir, "debian12.img")
	b, err := os.ReadFile(filepath.Join(dir, "VERSIONS"))
	if _, serr := os.Stat(img); serr != nil || err != nil {
		missing(t, "no Debian 12 guest image under %s: run hack/guest-image.sh", dir)
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, val, _ := strings.Cut(l, "=")
		switch k {
		case "KERNEL_61":
			v.K61 = val
		case "KERNEL_612":
			v.K612 = val
		}
	}
	return img, v
}

// guestRegion is the region the guests reserve: 1 GiB at 1 GiB of 3 GiB.
const (
	guestMem     = "3G"
	guestMemmap  = "memmap=1G!1G"
	guestCmdline = "root=/dev/vda rw console=ttyS0 " + guestMemmap + " quiet"
)

// guestDisk is a cached system image and the directory of its kernels;
// mem is the guest's RAM (guestMem if empty).
type guestDisk struct{ img, boot, cmdline, mem string }

// bootSysGuest boots the Debian 12 image on kernel (a release in the
// image's /boot) and waits for its agent. ports are guest TCP ports to
// forward.
func bootSysGuest(t *testing.T, kernel string, ports ...int) *sysGuest {
	t.Helper()
	img, v := guestImage(t)
	d := guestDisk{img: img, boot: filepath.Join(cacheDir(), "guest", "boot"), cmdline: guestCmdline}
	g := bootGuestDisk(t, d, kernel, ports...)
	g.kernels = v
	return g
}

// bootGuestDisk boots the image of d on kernel, on a throw-away overlay.
func bootGuestDisk(t *testing.T, d guestDisk, kernel string, ports ...int) *sysGuest {
	t.Helper()
	requireRoot(t)
	qemu := requireTool(t, qemu7)
	requireTool(t, "qemu-img")
	img, boot := d.img, d.boot
	dir, err := os.MkdirTemp("", "ckg") // unix socket paths are short
	if err != nil {
		t.Fatal(err)
	}
	g := &sysGuest{t: t, dir: dir, Share: filepath.Join(dir, "share"), Console: filepath.Join(dir, "console.log"),
		agent: qga{filepath.Join(dir, "qga.sock")}, Fwd: map[int]int{}}
	if err := os.MkdirAll(g.Share, 0o755); err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", img, overlay).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	netdev := "user,id=n0"
	for _, p := range ports {
		hp := workloads.FreePort(t)
		g.Fwd[p] = hp
		netdev += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-:%d", hp, p)
	}
	mem := d.mem
	if mem == "" {
		mem = guestMem
	}
	args := []string{"-machine", "pc", "-m", mem, "-smp", "2", "-cpu", "max",
		"-display", "none", "-monitor", "none", "-serial", "file:" + g.Console,
		"-kernel", filepath.Join(boot, "vmlinuz-"+kernel), "-initrd", filepath.Join(boot, "initrd.img-"+kernel),
		"-append", d.cmdline,
		"-drive", "file=" + overlay + ",if=virtio,format=qcow2,cache=unsafe",
		"-netdev", netdev, "-device", "virtio-net-pci,netdev=n0",
		"-virtfs", "local,path=" + g.Share + ",mount_tag=hostshare,security_model=none,id=hs",
		"-chardev", "socket,path=" + g.agent.socket + ",server=on,wait=off,id=qga0",
		"-device", "virtio-serial", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"}
	g.cmd = exec.Command(qemu, args...)
	g.cmd.Stdout, g.cmd.Stderr = os.Stderr, os.Stderr
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.close)
	g.WaitBoot("", 3*time.Minute)
	return g
}

func (g *sysGuest) close() {
	if g.cmd.Process != nil {
		g.cmd.Process.Kill()
		g.cmd.Wait()
	}
	if g.t.Failed() {
		g.t.Logf("guest console (last lines):\n%s", tail(readFile(g.Console), 60))
	}
	os.RemoveAll(g.dir)
}

func readFile(p string) string { b, _ := os.ReadFile(p); return string(b) }

// WaitBoot waits until the guest's agent answers in a boot whose id is
// not notBoot, and returns the new boot id.
func (g *sysGuest) WaitBoot(notBoot string, timeout time.Duration) string {
	g.t.Helper()
	return g.WaitBootUnless(notBoot, timeout, "")
}

// WaitBootUnless is WaitBoot that gives up as soon as the script
// unless, run in the old boot, prints something: what ended the boot has
// failed instead (its output is the test's failure).
func (g *sysGuest) WaitBootUnless(notBoot string, timeout time.Duration, unless string) string {
	g.t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		res, err := g.agent.exec(ctx, "cat /proc/sys/kernel/random/boot_id")
		cancel()
		if err == nil && res.Exit == 0 {
			if id := strings.TrimSpace(res.Stdout); id != "" && id != notBoot {
				g.t.Logf("guest up (boot %s) after %s", id[:8], time.Since(start).Round(time.Second))
				return id
			}
			if unless != "" {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				res, err := g.agent.exec(ctx, unless)
				cancel()
				if err == nil && strings.TrimSpace(res.Stdout) != "" {
					g.t.Fatalf("no new boot: %s", res.Stdout)
				}
			}
		}
		if g.cmd.ProcessState != nil {
			break
		}
		time.Sleep(time.Second)
	}
	g.t.Fatalf("guest agent did not answer in a new boot within %s; console:\n%s", timeout, tail(readFile(g.Console), 60))
	return ""
}

// Sh runs a shell script in the guest and returns its result.
func (g *sysGuest) Sh(timeout time.Duration, script string) execResult {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	res, err := g.agent.exec(ctx, script)
	if err != nil {
		g.t.Fatalf("guest: %s: %v", firstLine(script), err)
	}
	return res
}

// MustSh runs a script that must succeed and returns its stdout.
func (g *sysGuest) MustSh(timeout time.Duration, script string) string {
	g.t.Helper()
	res := g.Sh(timeout, script)
	if res.Exit != 0 {
		g.t.Fatalf("guest: %s: exit %d\nstdout:\n%s\nstderr:\n%s", firstLine(script), res.Exit, tail(res.Stdout, 40), tail(res.Stderr, 40))
	}
	return res.Stdout
}

// Start runs a script in the guest without waiting for it (a command that
// ends the boot, say).
func (g *sysGuest) Start(script string) {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := g.agent.start(ctx, script); err != nil {
		g.t.Fatalf("guest: %s: %v", firstLine(script), err)
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return l
}

// lastInt returns the number after the last prefix in s (e.g. "vm-count ").
func lastInt(s, prefix string) (int64, bool) {
	var n int64
	ok := false
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if v, found := strings.CutPrefix(strings.TrimSpace(sc.Text()), prefix); found {
			if x, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
				n, ok = x, true
			}
		}
	}
	return n, ok
}
