package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ckpt-dev/ckpt/checkpoint"
	"github.com/ckpt-dev/ckpt/hypervisors"
	"github.com/ckpt-dev/ckpt/memregion"
	"github.com/ckpt-dev/ckpt/restore"
)

// The second half of the demo suspends and resumes real workloads: a
// runc container and a QEMU VM, each printing a counter, built from what
// hack/setup.sh installs (busybox-static, runc, CRIU, QEMU, a Debian
// guest kernel in .cache/kernels).

const demoLoop = `i=0; while :; do i=$((i+1)); echo "tick $i"; sleep 0.1; done`

// demoPrereqs says what the workload demo needs and does not find.
func demoPrereqs(guestKernel string) []string {
	var miss []string
	if os.Geteuid() != 0 {
		miss = append(miss, "root")
	}
	for _, tool := range []string{"runc", "criu", "qemu-system-x86_64", "cpio", "iptables-restore"} {
		if _, err := exec.LookPath(tool); err != nil {
			miss = append(miss, tool)
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		miss = append(miss, "/bin/busybox (busybox-static)")
	}
	if guestKernel == "" {
		miss = append(miss, "a guest kernel (.cache/kernels/*/boot/vmlinuz-*, or --guest-kernel)")
	}
	return miss
}

// findGuestKernel looks for the kernel hack/setup.sh unpacks.
func findGuestKernel() string {
	ks, _ := filepath.Glob(".cache/kernels/6.1/boot/vmlinuz-*")
	if len(ks) == 0 {
		ks, _ = filepath.Glob(".cache/kernels/*/boot/vmlinuz-*")
	}
	if len(ks) == 0 {
		return ""
	}
	abs, _ := filepath.Abs(ks[0])
	return abs
}

type demoCounter struct{ n atomic.Int64 }

var tickRE = regexp.MustCompile(`tick (\d+)`)

func (c *demoCounter) scan(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		c.see(sc.Text())
	}
}

func (c *demoCounter) see(line string) {
	if m := tickRE.FindStringSubmatch(line); m != nil {
		if v, _ := strconv.ParseInt(m[1], 10, 64); v > c.n.Load() {
			c.n.Store(v)
		}
	}
}

// scanFile updates the counter from a whole file (console, log).
func (c *demoCounter) scanFile(path string) int64 {
	if b, err := os.ReadFile(path); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			c.see(l)
		}
	}
	return c.n.Load()
}

func runWorkloadDemo(ctx context.Context, w io.Writer, base, guestKernel string, log *slog.Logger, events func(checkpoint.Event)) error {
	dir, err := os.MkdirTemp(base, "ckd-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	runcRoot, qmpDir := filepath.Join(dir, "runc"), filepath.Join(dir, "q")
	os.MkdirAll(qmpDir, 0o700)
	id := fmt.Sprintf("ckpt-demo-%d", os.Getpid())

	// The container: busybox printing a counter to a pipe.
	bundle, err := demoBundle(dir)
	if err != nil {
		return err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	run := exec.Command("runc", "--root", runcRoot, "run", "--detach", "--bundle", bundle, id)
	run.Stdout, run.Stderr = pw, pw
	if err := run.Run(); err != nil {
		return fmt.Errorf("runc run: %w", err)
	}
	pw.Close()
	defer exec.Command("runc", "--root", runcRoot, "delete", "--force", id).Run()
	var ctr demoCounter
	go ctr.scan(pr)

	// The VM: Debian's kernel, a busybox init printing a counter.
	console := filepath.Join(dir, "console")
	initrd, err := demoInitrd(dir)
	if err != nil {
		return err
	}
	socket := filepath.Join(qmpDir, "vm.qmp")
	qemu := exec.Command("qemu-system-x86_64", "-name", "guest="+id+"-vm", "-m", "256M", "-nodefaults", "-display", "none",
		"-kernel", guestKernel, "-initrd", initrd, "-append", "console=ttyS0 quiet rdinit=/init",
		"-chardev", "file,id=s0,path="+console+",append=on", "-serial", "chardev:s0",
		"-qmp", "unix:"+socket+",server=on,wait=off")
	qemu.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := qemu.Start(); err != nil {
		return err
	}
	go qemu.Wait()
	defer killBySocket(socket)
	var vm demoCounter
	deadline := time.Now().Add(2 * time.Minute)
	for ctr.n.Load() == 0 || vm.scanFile(console) == 0 {
		if time.Now().After(deadline) {
			return errors.New("the sample container or VM did not start")
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second)
	fmt.Fprintf(w, "%-9s container %s at tick %d, VM %s-vm at tick %d\n", "started", id, ctr.n.Load(), id, vm.scanFile(console))

	region := filepath.Join(dir, "region")
	if err := memregion.Format(region, memregion.FormatOptions{Kind: memregion.KindRaw, Size: memregion.GiB}); err != nil {
		return err
	}
	cfg := map[string]map[string]any{"criu": {"runc_root": runcRoot}, "qemu": {"socket_dir": qmpDir}}
	bs, _, err := hypervisors.Load(ctx, cfg, log)
	if err != nil {
		return err
	}
	journal := filepath.Join(dir, "journal.json")
	plan, err := checkpoint.NewPlan(ctx, checkpoint.Options{Region: region, Backends: bs, Journal: journal, Logger: log, Events: events})
	if err != nil {
		return err
	}
	res, err := checkpoint.Suspend(ctx, plan)
	if err != nil {
		return err
	}
	before := map[string]int64{"ctr": ctr.n.Load(), "vm": vm.scanFile(console)}
	fmt.Fprintf(w, "%-9s %d workloads, %s into a raw region in %.2fs (freeze %.3fs, dump %.2fs at %.2f GB/s, seal %.3fs)\n", "suspend",
		len(res.Workloads), memregion.HumanBytes(res.Bytes), res.Phases["freeze"]+res.Phases["dump"]+res.Phases["seal"]+res.Phases["finish"],
		res.Phases["freeze"], res.Phases["dump"], res.GBps, res.Phases["seal"])
	for _, wr := range res.Workloads {
		fmt.Fprintf(w, "%-9s   %-34s %9s  frozen %.2fs\n", "", wr.Key, memregion.HumanBytes(wr.Bytes), wr.FrozenS)
	}
	fmt.Fprintf(w, "%-9s both ended; their only copy is the region (here a kexec would boot the new kernel)\n", "")
	time.Sleep(time.Second)
	rr, err := restore.ResumeAll(ctx, restore.Options{Region: region, Backends: bs, Journal: journal,
		State: filepath.Join(dir, "resumed.json"), Logger: log})
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "%-9s %d workloads verified and restored in %.2fs; region released: %v\n", "resume", len(rr.Restored), rr.Seconds, rr.Released)
	ctrLog := filepath.Join("/var/log/ckpt", id+".log") // where the restored container's stdout goes
	time.Sleep(1500 * time.Millisecond)
	c2, v2 := ctr.scanFile(ctrLog), vm.scanFile(console)
	if c2 <= before["ctr"] || v2 <= before["vm"] {
		return fmt.Errorf("counters did not continue: container %d→%d, VM %d→%d", before["ctr"], c2, before["vm"], v2)
	}
	fmt.Fprintf(w, "%-9s container tick %d → %d, VM tick %d → %d: both continued where they stopped\n", "after", before["ctr"], c2, before["vm"], v2)
	return nil
}

// demoBundle is an OCI bundle with busybox running the counter loop,
// sharing the host network (nothing to set up).
func demoBundle(dir string) (string, error) {
	b := filepath.Join(dir, "bundle")
	rootfs := filepath.Join(b, "rootfs")
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp"} {
		os.MkdirAll(filepath.Join(rootfs, d), 0o755)
	}
	if err := copyFile("/bin/busybox", filepath.Join(rootfs, "bin", "busybox")); err != nil {
		return "", err
	}
	for _, a := range []string{"sh", "sleep"} {
		os.Symlink("busybox", filepath.Join(rootfs, "bin", a))
	}
	if out, err := exec.Command("runc", "spec", "--bundle", b).CombinedOutput(); err != nil {
		return "", fmt.Errorf("runc spec: %v: %s", err, out)
	}
	var spec map[string]any
	raw, _ := os.ReadFile(filepath.Join(b, "config.json"))
	if err := json.Unmarshal(raw, &spec); err != nil {
		return "", err
	}
	proc := spec["process"].(map[string]any)
	proc["terminal"] = false
	proc["args"] = []string{"/bin/sh", "-c", demoLoop}
	spec["root"].(map[string]any)["readonly"] = false
	linux := spec["linux"].(map[string]any)
	var nss []any
	for _, ns := range linux["namespaces"].([]any) {
		if ns.(map[string]any)["type"] != "network" {
			nss = append(nss, ns)
		}
	}
	linux["namespaces"] = nss
	raw, _ = json.MarshalIndent(spec, "", " ")
	return b, os.WriteFile(filepath.Join(b, "config.json"), raw, 0o644)
}

// demoInitrd is a busybox initramfs whose init prints the counter on the
// serial console.
func demoInitrd(dir string) (string, error) {
	root := filepath.Join(dir, "initrd")
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	os.MkdirAll(filepath.Join(root, "dev"), 0o755)
	if err := copyFile("/bin/busybox", filepath.Join(root, "bin", "busybox")); err != nil {
		return "", err
	}
	for _, a := range []string{"sh", "sleep", "mount"} {
		os.Symlink("busybox", filepath.Join(root, "bin", a))
	}
	init := "#!/bin/sh\nexport PATH=/bin\nmount -t devtmpfs dev /dev\nexec > /dev/ttyS0 2>&1\n" + demoLoop + "\n"
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(init), 0o755); err != nil {
		return "", err
	}
	out := filepath.Join(dir, "initrd.cpio")
	cmd := exec.Command("sh", "-c", "find . | cpio -o -H newc --quiet > "+out)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("cpio: %v: %s", err, b)
	}
	return out, nil
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

// killBySocket ends the QEMU whose command line names socket.
func killBySocket(socket string) {
	ps, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range ps {
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), socket) {
			if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}
