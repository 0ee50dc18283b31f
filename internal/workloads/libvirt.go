package workloads

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ckpt-dev/ckpt/internal/testenv"
)

// RequireLibvirt needs virsh and a running libvirtd (hack/setup.sh
// installs and starts it).
func RequireLibvirt(t testing.TB) string {
	t.Helper()
	testenv.RequireRoot(t)
	virsh := testenv.RequireTool(t, "virsh")
	if _, err := os.Stat("/run/libvirt/libvirt-sock"); err != nil {
		testenv.Missing(t, "libvirtd is not running (no /run/libvirt/libvirt-sock; hack/setup.sh starts it)")
	}
	return virsh
}

// Virsh runs virsh on qemu:///system.
func Virsh(t testing.TB, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("virsh", append([]string{"-c", "qemu:///system", "-q"}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("virsh %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// DomainGlob matches the names of the domains this test process starts
// (for ckpt --libvirt-domain, so that tests never suspend other domains).
func DomainGlob() string { return fmt.Sprintf("ckpt-dom-%d-*", os.Getpid()) }

// StartDomain defines and starts, with virsh as an operator would, a
// persistent TCG libvirt domain booting the test guest (testload as init,
// dataMiB of checksummed data, ticks on the serial console, which goes to
// a file). QEMU runs as root so that it can read the test's files. The
// domain is destroyed and undefined at cleanup.
func StartDomain(t testing.TB, memMiB, dataMiB int, autostart bool) *Guest {
	t.Helper()
	RequireLibvirt(t)
	testenv.RequireTool(t, "cpio")
	emu := testenv.RequireTool(t, "qemu-system-x86_64")
	g := &Guest{ID: fmt.Sprintf("ckpt-dom-%d-%d", os.Getpid(), Seq.Add(1))} // matches DomainGlob
	dir := t.TempDir()
	g.Console = filepath.Join(dir, "console.log")
	xml := fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>%d</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>%s</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>%s</emulator>
    <serial type='file'><source path='%s' append='on'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
  <seclabel type='static' model='dac' relabel='no'><label>root:root</label></seclabel>
</domain>
`, g.ID, memMiB, GuestKernel(t), GuestInitrd(t), GuestCmdline(dataMiB), emu, g.Console)
	def := filepath.Join(dir, "domain.xml")
	if err := os.WriteFile(def, []byte(xml), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := Virsh(t, "define", def); err != nil {
		t.Fatal(out, err)
	}
	t.Cleanup(func() {
		Virsh(t, "destroy", g.ID)
		Virsh(t, "undefine", g.ID, "--managed-save")
	})
	if autostart {
		if out, err := Virsh(t, "autostart", g.ID); err != nil {
			t.Fatal(out, err)
		}
	}
	if out, err := Virsh(t, "start", g.ID); err != nil {
		t.Fatal(out, err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if g.Ticks() > 0 {
			return g
		}
		time.Sleep(200 * time.Millisecond)
	}
	b, _ := os.ReadFile(g.Console)
	t.Fatalf("domain %s did not start ticking; console:\n%s", g.ID, TailLines(string(b), 20))
	return nil
}

// DomainState is virsh domstate's answer ("running", "paused", "shut off").
func DomainState(t testing.TB, name string) string {
	t.Helper()
	out, err := Virsh(t, "domstate", name)
	if err != nil {
		return "error: " + err.Error()
	}
	return out
}
