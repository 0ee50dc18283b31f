package integration

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// kexecInit is the guest's /init. Stage "write" (first boot) formats the
// preserved region /dev/pmem0, writes and seals a checkpoint of known
// content with ckpt, loads the same kernel with kexec_file_load keeping
// memmap= on the command line, and kexecs. Stage "verify" (after kexec)
// optionally flips one byte of an object (ckpt.corrupt=1), then checks the
// region with ckpt and prints CKPT-RESULT.
const kexecInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "CKPT-$*"; }
param() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p"; }
for m in libnvdimm nd_btt nd_pmem nd_e820; do insmod /lib/modules/$(uname -r)/$m.ko || say "INSMOD-FAILED $m"; done
i=0; while [ ! -b /dev/pmem0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
[ -b /dev/pmem0 ] || say "RESULT: FAIL (no /dev/pmem0)"
case "$(param ckpt.stage)" in
write)
	say "STAGE write, kernel $(uname -r), boot $(cat /proc/sys/kernel/random/boot_id)"
	ckpt region plan --size 256M | head -1
	ckpt region format /dev/pmem0 --kind raw &&
	ckpt region selftest write /dev/pmem0 --objects 4 --size 8M &&
	ckpt kexec load --kernel /boot/vmlinuz --initrd /boot/initrd-next --reuse-cmdline --set ckpt.stage=verify &&
	say "KEXEC" && ckpt kexec exec
	say "RESULT: FAIL (write stage)"
	;;
verify)
	say "STAGE verify, kernel $(uname -r), boot $(cat /proc/sys/kernel/random/boot_id)"
	if [ "$(param ckpt.corrupt)" = 1 ]; then
		off=$(ckpt region inspect /dev/pmem0 | awk '$1 == "selftest/obj-002" { print $4 + 12345 }')
		b=$(dd if=/dev/pmem0 bs=1 skip=$off count=1 2>/dev/null | od -An -tu1 | tr -d ' ')
		printf "\\$(printf %o $(( (b ^ 1) & 255 )))" | dd of=/dev/pmem0 bs=1 seek=$off conv=notrunc 2>/dev/null
		sync
		say "CORRUPTED byte at $off (was $b)"
	fi
	if ckpt region selftest check --expect-new-boot /dev/pmem0; then
		say "RESULT: PASS"
	elif ckpt region inspect /dev/pmem0 | grep -q '^state: sealed'; then
		say "RESULT: REFUSED-KEPT"
	else
		say "RESULT: FAIL"
	fi
	;;
*)
	say "RESULT: FAIL (no ckpt.stage)"
	;;
esac
sync
poweroff -f
`

const kexecCmdline = "console=ttyS0 quiet panic=-1 memmap=256M!1G ckpt.stage=write"

// TestRegionSurvivesKexec writes a checkpoint into a memmap= region in a
// QEMU guest, kexecs into the same Debian kernel and verifies every byte.
func TestRegionSurvivesKexec(t *testing.T) {
	t.Parallel()
	k := findGuestKernel(t, "6.1")
	initrd := guestInitramfs(t, k, k, kexecInit)
	console := bootGuest(t, qemu7, k, initrd, "2G", kexecCmdline, 3*time.Minute)
	for _, want := range []string{"CKPT-STAGE write", "existing reservation: memmap=256M!1G (/dev/pmem0)",
		"CKPT-KEXEC", "CKPT-STAGE verify", "selftest checkpoint intact"} {
		if !strings.Contains(console, want) {
			t.Errorf("console lacks %q", want)
		}
	}
	expectResult(t, console, "PASS")
}

// TestCorruptRegionRefusedAfterKexec flips one byte of an object after the
// kexec: verification must refuse the region, name the object, and keep
// the checkpoint.
func TestCorruptRegionRefusedAfterKexec(t *testing.T) {
	t.Parallel()
	k := findGuestKernel(t, "6.1")
	initrd := guestInitramfs(t, k, k, kexecInit)
	console := bootGuest(t, qemu7, k, initrd, "2G", kexecCmdline+" ckpt.corrupt=1", 3*time.Minute)
	for _, want := range []string{"CKPT-CORRUPTED", `object "selftest/obj-002": checksum mismatch`, "nothing was deleted"} {
		if !strings.Contains(console, want) {
			t.Errorf("console lacks %q", want)
		}
	}
	expectResult(t, console, "REFUSED-KEPT")
}

// TestRegionSurvivesKernelUpdate is the update itself: the checkpoint is
// written under Debian 12's 6.1 kernel and verified after a kexec into
// bookworm-backports' 6.12, in QEMU 10.
func TestRegionSurvivesKernelUpdate(t *testing.T) {
	t.Parallel()
	old, next := findGuestKernel(t, "6.1"), findGuestKernel(t, "6.12")
	initrd := guestInitramfs(t, old, next, kexecInit)
	console := bootGuest(t, qemu10, old, initrd, "2G", kexecCmdline, 3*time.Minute)
	for _, want := range []string{
		"CKPT-STAGE write, kernel " + filepath.Base(old.Modules),
		"CKPT-STAGE verify, kernel " + filepath.Base(next.Modules),
		"written by kernel " + filepath.Base(old.Modules),
	} {
		if !strings.Contains(console, want) {
			t.Errorf("console lacks %q", want)
		}
	}
	expectResult(t, console, "PASS")
}
