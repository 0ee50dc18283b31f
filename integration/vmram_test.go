package integration

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// vmramSizes are the guest RAM sizes (MiB) of the VMs whose RAM stays in
// place; vmramCopy is one more VM of the first size with plain RAM, on the
// copy path, for comparison.
var vmramSizes = []int{256, 512, 1024}

const vmramCopy = "vmcopy256"

// vmramInstall installs ckpt on the fs layout of a 3 GiB pmem region and
// starts the VMs under QEMU 10: vm256, vm512 and vm1024 with their RAM a
// shared file in the region's filesystem (a preserved RAM directory in
// ckpt's configuration), vmcopy256 with plain RAM. Each touches every
// page of its RAM, then counts on its serial port.
const vmramInstall = `set -eu
dpkg -i /mnt/host/ckpt_*.deb
sed -i 's|^#CKPT_REGION=.*|CKPT_REGION=/dev/pmem0|' /etc/default/ckpt
ckpt region format /dev/pmem0 --kind fs
findmnt -n -o OPTIONS /run/ckpt/fs/pmem0 | grep -q dax
RAM=/run/ckpt/fs/pmem0/vm-ram
mkdir -p $RAM /run/ckpt/qmp /etc/ckpt/ckpt.toml.d /var/lib/ckpt-e2e
printf '[backends.qemu]\npreserved_ram_dirs = ["%s"]\n' $RAM >/etc/ckpt/ckpt.toml.d/50-vmram.toml
install -m 644 /mnt/host/vmcounter.elf /var/lib/ckpt-e2e/vmcounter.elf
vm() { # name MiB extra-args...
	n=$1 m=$2; shift 2
	systemd-run --unit=$n --collect /usr/local/bin/qemu10-system-x86_64 -accel tcg -m ${m}M "$@" \
		-display none -nic none -monitor none -kernel /var/lib/ckpt-e2e/vmcounter.elf \
		-chardev file,id=ser,path=/var/log/$n.serial,append=on -serial chardev:ser \
		-qmp unix:/run/ckpt/qmp/$n.qmp,server=on,wait=off
}
for m in 256 512 1024; do
	vm vm$m $m -machine pc,memory-backend=ram0 \
		-object memory-backend-file,id=ram0,size=${m}M,mem-path=$RAM/vm$m.ram,share=on
done
vm vmcopy256 256 -machine pc
for n in vm256 vm512 vm1024 vmcopy256; do
	for i in $(seq 600); do grep -q 'vm-count 2$' /var/log/$n.serial 2>/dev/null && break; sleep 0.5; done
	grep -q 'vm-count 2$' /var/log/$n.serial || { echo "$n does not count"; exit 1; }
done
`

// TestVMRAMInPlace is the cpr-reboot path across a real kexec: VMs whose
// RAM is a file on the fs layout's DAX filesystem (the preserved memory
// itself) are suspended by ckpt suspend-all with only their device state
// written, kexec'd into 6.12 and resumed at boot by ckpt-resume.service
// with their RAM where it was. 256 MiB, 512 MiB and 1 GiB VMs in one run,
// beside a 256 MiB VM with plain RAM whose pages are copied. Each VM's
// counter (in its RAM) goes on; the state each writes into the region is
// its device state alone, whatever its RAM, where the copy path writes its
// RAM. The blackout of each (its freeze → its restore, ckpt's events) is
// logged: on the in-place path it does not grow with RAM.
func TestVMRAMInPlace(t *testing.T) {
	t.Parallel()
	img, v := guestImage(t)
	d := guestDisk{img: img, boot: filepath.Join(cacheDir(), "guest", "boot"), mem: "6G",
		cmdline: "root=/dev/vda rw console=ttyS0 memmap=3G!4G quiet"}
	g := bootGuestDisk(t, d, v.K61)
	g.kernels = v
	stageE2E(t, g)
	g.MustSh(10*time.Minute, vmramInstall)
	names := []string{vmramCopy}
	for _, m := range vmramSizes {
		names = append(names, fmt.Sprintf("vm%d", m))
	}
	counts := func() map[string]int64 {
		c := map[string]int64{}
		for _, n := range names {
			c[n], _ = lastInt(g.MustSh(time.Minute, "cat /var/log/"+n+".serial"), "vm-count ")
		}
		return c
	}
	boot := strings.TrimSpace(g.MustSh(time.Minute, "cat /proc/sys/kernel/random/boot_id"))
	before := counts()
	s := &e2eSuite{t: t, g: g}
	r := &run{start: time.Now()}
	plan := g.MustSh(5*time.Minute, "ckpt plan --region /dev/pmem0 --kernel "+v.K612)
	t.Logf("ckpt plan:\n%s", plan)
	g.Start("(ckpt suspend-all --region /dev/pmem0 --kernel " + v.K612 + ") >/var/log/ckpt-e2e-suspend.log 2>&1; echo exit $? >>/var/log/ckpt-e2e-suspend.log")
	g.WaitBootUnless(boot, 10*time.Minute, "grep -q '^exit [1-9]' /var/log/ckpt-e2e-suspend.log && cat /var/log/ckpt-e2e-suspend.log")
	s.awaitResume(r, true)
	if k := strings.TrimSpace(g.MustSh(time.Minute, "uname -r")); k != v.K612 {
		t.Fatalf("kernel after the update: %s, want %s", k, v.K612)
	}
	time.Sleep(3 * time.Second) // a few more counts
	after := counts()
	ev, dumped := parseEvents(r.log), dumpedBytes(r.log)
	rows := []string{"| VM | guest RAM | RAM | written into the region | blackout (its freeze → restored) |", "|---|---|---|---|---|"}
	for _, n := range names {
		serial := g.MustSh(time.Minute, "cat /var/log/"+n+".serial")
		if err := countsOnByOne(serial, "vm-count "); err != nil || after[n] <= before[n] {
			t.Fatalf("VM %s: counter %d before, %d after: %v", n, before[n], after[n], err)
		}
		key := "qemu/" + n
		mib, _ := strconv.Atoi(strings.TrimLeft(n, "vmcopy"))
		written, ok := dumped[key]
		if !ok {
			t.Fatalf("no dump event for %s in:\n%s", key, r.log)
		}
		how := "in place (cpr-reboot)"
		if n == vmramCopy {
			how = "copied"
			// Every page was touched: the copy path writes them all.
			if written < int64(mib)<<20*3/4 {
				t.Fatalf("%s on the copy path wrote %d bytes for %d MiB of touched RAM", n, written, mib)
			}
		} else if written > 16<<20 {
			t.Fatalf("%s wrote %d bytes into the region: its RAM was copied, not left in place", n, written)
		}
		black := ev.last("restore", key).Sub(ev.first("freeze", key))
		rows = append(rows, fmt.Sprintf("| %s | %d MiB | %s | %.1f MiB | %.1f s |", n, mib, how, float64(written)/(1<<20), black.Seconds()))
	}
	if st := g.MustSh(time.Minute, "ckpt status --region /dev/pmem0 --json"); !strings.Contains(st, `"committed": false`) {
		t.Fatalf("region not released:\n%s", st)
	}
	for _, m := range vmramSizes {
		g.MustSh(time.Minute, fmt.Sprintf("test -s /run/ckpt/fs/pmem0/vm-ram/vm%d.ram", m))
	}
	t.Logf("VMs across a kexec 6.1 → 6.12 (TCG guest in a TCG host), RAM in place vs copied:\n%s", strings.Join(rows, "\n"))
}

var reDumped = regexp.MustCompile(`msg=progress phase=dump workload=(\S+) bytes="?([0-9.]+) ?([KMGT]?i?B)"?`)

// dumpedBytes is each workload's bytes from ckpt's dump events in a log.
func dumpedBytes(log string) map[string]int64 {
	unit := map[string]float64{"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
	out := map[string]int64{}
	for _, m := range reDumped.FindAllStringSubmatch(log, -1) {
		f, _ := strconv.ParseFloat(m[2], 64)
		out[m[1]] = int64(f * unit[m[3]])
	}
	return out
}
