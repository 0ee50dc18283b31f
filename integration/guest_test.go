package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// guestKernel is a Debian kernel unpacked by hack/setup.sh.
type guestKernel struct {
	Vmlinuz string
	Modules string // lib/modules/<release>
}

func findGuestKernel(t *testing.T, series string) guestKernel {
	t.Helper()
	root := filepath.Join(cacheDir(), "kernels", series)
	vm, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	mods, _ := filepath.Glob(filepath.Join(root, "lib", "modules", "*"))
	if len(vm) != 1 || len(mods) != 1 {
		missing(t, "Debian %s guest kernel not unpacked under %s", series, root)
	}
	return guestKernel{Vmlinuz: vm[0], Modules: mods[0]}
}

// pmemModules are loaded in this order to turn memmap=SIZE!OFFSET into
// /dev/pmem0 (busybox insmod resolves no dependencies and reads no .xz).
var pmemModules = []string{"libnvdimm", "nd_btt", "nd_pmem", "nd_e820"}

// stageTree copies files into dir: map of destination (relative) → source.
func stageTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for dst, src := range files {
		p := filepath.Join(dir, dst)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(src, ".xz") {
			out, err := exec.Command("xz", "-dc", src).Output()
			if err != nil {
				t.Fatalf("xz -dc %s: %v", src, err)
			}
			b = out
		}
		if err := os.WriteFile(p, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// cpio packs dir as a newc archive, gzip-compressed when gz is set.
func cpio(t *testing.T, dir, out string, gz bool) {
	t.Helper()
	requireTool(t, "cpio")
	pipe := "find . | cpio -o -H newc --quiet"
	if gz {
		pipe += " | gzip -1"
	}
	cmd := exec.Command("sh", "-c", pipe+" > "+out)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v: %s", err, b)
	}
}

// guestInitramfs builds the initramfs of a two-stage kexec test: base holds
// busybox, ckpt, the pmem modules of both kernels (under
// /lib/modules/<release>/) and init; the first stage's initrd is base plus
// the next kernel and base itself, to kexec into.
func guestInitramfs(t *testing.T, first, next guestKernel, init string) string {
	t.Helper()
	requireTool(t, "xz")
	dir := t.TempDir()
	files := map[string]string{
		"bin/busybox": "/bin/busybox",
		"bin/ckpt":    ckptBinary(t),
	}
	for _, k := range []guestKernel{first, next} {
		for _, m := range pmemModules {
			src, _ := filepath.Glob(filepath.Join(k.Modules, "kernel", "drivers", "nvdimm", m+".ko*"))
			if len(src) != 1 {
				t.Fatalf("module %s not in %s", m, k.Modules)
			}
			files["lib/modules/"+filepath.Base(k.Modules)+"/"+m+".ko"] = src[0]
		}
	}
	base := filepath.Join(dir, "base")
	stageTree(t, base, files)
	for _, d := range []string{"proc", "sys", "dev", "tmp", "boot"} {
		os.MkdirAll(filepath.Join(base, d), 0o755)
	}
	if err := os.WriteFile(filepath.Join(base, "init"), []byte(init), 0o755); err != nil {
		t.Fatal(err)
	}
	baseCpio := filepath.Join(dir, "base.cpio.gz")
	cpio(t, base, baseCpio, true)

	extra := filepath.Join(dir, "extra")
	stageTree(t, extra, map[string]string{"boot/vmlinuz": next.Vmlinuz, "boot/initrd-next": baseCpio})
	extraCpio := filepath.Join(dir, "extra.cpio")
	cpio(t, extra, extraCpio, false)

	// The kernel unpacks concatenated archives in turn.
	a, _ := os.ReadFile(baseCpio)
	b, _ := os.ReadFile(extraCpio)
	out := filepath.Join(dir, "initrd-first")
	if err := os.WriteFile(out, append(pad4(a), b...), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// Emulators hack/setup.sh installs: bookworm's 7.2 and backports' 10.
const (
	qemu7  = "qemu-system-x86_64"
	qemu10 = "qemu10-system-x86_64"
)

// bootGuest runs QEMU (TCG) until the guest powers off and returns the
// serial console; extra are more QEMU arguments (a later -smp wins).
func bootGuest(t *testing.T, emulator string, k guestKernel, initrd, mem, cmdline string, timeout time.Duration, extra ...string) string {
	t.Helper()
	qemu := requireTool(t, emulator)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	args := append([]string{"-m", mem, "-smp", "1", "-no-reboot",
		"-display", "none", "-monitor", "none", "-serial", "stdio",
		"-kernel", k.Vmlinuz, "-initrd", initrd, "-append", cmdline}, extra...)
	cmd := exec.CommandContext(ctx, qemu, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	t.Logf("guest ran %s", time.Since(start).Round(time.Second))
	if ctx.Err() != nil {
		t.Fatalf("guest did not power off within %s; console:\n%s", timeout, tail(out.String(), 60))
	}
	if err != nil {
		t.Fatalf("qemu: %v; console:\n%s", err, tail(out.String(), 60))
	}
	return out.String()
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// consoleResult returns the value of the last "CKPT-RESULT: X" line.
func consoleResult(console string) string {
	res := ""
	for _, l := range strings.Split(console, "\n") {
		if _, v, ok := strings.Cut(strings.TrimSpace(l), "CKPT-RESULT: "); ok {
			res = strings.TrimSpace(v)
		}
	}
	return res
}

func expectResult(t *testing.T, console, want string) {
	t.Helper()
	if got := consoleResult(console); got != want {
		t.Fatalf("guest result %q, want %q; console:\n%s", got, want, tail(console, 80))
	}
	t.Log(fmt.Sprintf("guest says CKPT-RESULT: %s", want))
}
