#!/bin/bash
# guest-image.sh builds, once, a small Debian system image that the
# integration tests boot under QEMU as a "real host" with systemd:
#
#   hack/guest-image.sh [debian12|debian13]     default debian12
#
#   debian12 (bookworm, systemd 252): $CACHE/guest/
#     debian12.img   raw ext4 filesystem (no partition table), root=/dev/vda
#     boot/          the image's vmlinuz-* and initrd.img-* for -kernel/-initrd
#     VERSIONS       KERNEL_61=<uname -r>, KERNEL_612=<uname -r>
#     Both pinned Debian kernels: the kexec updates go from one to the other.
#   debian13 (trixie, systemd 257, which has soft-reboot): $CACHE/guest13/
#     debian13.img, boot/, VERSIONS (KERNEL=<uname -r> of trixie's kernel)
#
# Each holds systemd + networkd, qemu-guest-agent, runc, iptables, QEMU (7.2
# and 10.0) and the host's CRIU prefix (its own glibc, so it runs on either).
# An image is rebuilt only when this script, the CRIU prefix's version or the
# kernel pins change (see $OUT/stamp); otherwise it exits at once.
# hack/guest-boot.sh boots the Debian 12 one. Needs root (mmdebstrap
# --mode=root, chroot).
set -euo pipefail

SELF=$(readlink -f "$0")
REPO=$(cd "$(dirname "$SELF")/.." && pwd)
CACHE=${CKPT_CACHE:-$REPO/.cache}
OUT=$CACHE/guest
PREFIX=${CKPT_CRIU_PREFIX:-/opt/ckpt/criu}
WRAPPER=/usr/local/sbin/criu
QEMU10_PREFIX=${CKPT_QEMU10_PREFIX:-/opt/ckpt/qemu10} # hack/setup.sh's
QEMU10=/usr/local/bin/qemu10-system-x86_64
MIRROR=http://deb.debian.org/debian
SECURITY=http://deb.debian.org/debian-security
SIZE=3G

# The kernel pins are hack/setup.sh's (same CKPT_KERNEL_* overrides).
setup_default() { sed -n "s/^$1=\${CKPT_$1:-\([^}]*\)}\$/\1/p" "$REPO/hack/setup.sh"; }
KERNEL_61=${CKPT_KERNEL_61:-$(setup_default KERNEL_61)}
KERNEL_612=${CKPT_KERNEL_612:-$(setup_default KERNEL_612)}

# The flavour: which Debian, its kernels (packages installed in the
# customize hook), and where the image goes.
FLAVOR=debian12
if [ "${1:-}" != --customize ] && [ -n "${1:-}" ]; then FLAVOR=$1; fi
case $FLAVOR in
debian12)
	SUITE=bookworm OUT=$CACHE/guest
	KERNELS="$KERNEL_61 $KERNEL_612/bookworm-backports"
	;;
debian13)
	# trixie's own kernel (6.12), whatever its point release is today.
	SUITE=trixie OUT=$CACHE/guest13
	KERNELS=linux-image-amd64
	;;
*) echo "guest-image.sh: unknown flavour '$FLAVOR' (debian12 or debian13)" >&2; exit 2 ;;
esac
IMG_NAME=$FLAVOR.img

# Packages installed by mmdebstrap itself; the kernels and kexec-tools follow
# in the customize hook, once initramfs-tools is configured for them.
PKGS=(systemd systemd-sysv udev dbus kmod initramfs-tools qemu-guest-agent
	iptables runc procps iproute2 util-linux e2fsprogs qemu-system-x86
	busybox tar gzip zstd ca-certificates ndctl)

# Units useless in a throwaway test guest that cost boot time under TCG
# (systemd-sysusers: the users exist since package installation; kexec-load:
# an LSB script that does nothing with LOAD_KEXEC=false).
MASK=(apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service
	e2scrub_all.timer e2scrub_all.service e2scrub_reap.service fstrim.timer
	man-db.timer systemd-timesyncd.service dpkg-db-backup.timer systemd-sysusers.service
	kexec-load.service modprobe@drm.service modprobe@efi_pstore.service modprobe@fuse.service)

log() { printf '[guest-image] %s\n' "$*" >&2; }

# customize ROOT runs inside mmdebstrap's customize hook (chroot with /proc,
# /sys and /dev mounted, apt lists still present).
customize() {
	local r=$1
	export DEBIAN_FRONTEND=noninteractive

	echo ckpt-guest >"$r/etc/hostname"
	printf '127.0.0.1\tlocalhost\n127.0.1.1\tckpt-guest\n' >"$r/etc/hosts"
	mkdir -p "$r/mnt/host"
	cat >"$r/etc/fstab" <<-'EOF'
		/dev/vda / ext4 rw,errors=remount-ro 0 1
		hostshare /mnt/host 9p trans=virtio,version=9p2000.L,msize=262144,nofail,x-systemd.device-timeout=5s 0 0
	EOF

	# initramfs-tools: only the listed modules (root on virtio, 9p early), not
	# MODULES=most's ~750: a smaller initrd and far less udev work under TCG.
	# e2fsck for the root (no /dev/vda in the chroot to probe); no resume.
	printf '%s\n' virtio_pci virtio_blk ext4 9p 9pnet_virtio >>"$r/etc/initramfs-tools/modules"
	echo MODULES=list >"$r/etc/initramfs-tools/conf.d/modules"
	echo FSTYPE=ext4 >"$r/etc/initramfs-tools/conf.d/fstype"
	echo RESUME=none >"$r/etc/initramfs-tools/conf.d/resume"

	# kexec-tools must not turn reboots into kexecs (the tests kexec on purpose).
	echo 'kexec-tools kexec-tools/load_kexec boolean false' | chroot "$r" debconf-set-selections
	log "installing $KERNELS, kexec-tools"
	# shellcheck disable=SC2086 # a list of packages
	chroot "$r" apt-get install -y -q $KERNELS kexec-tools

	# CRIU: the host's private prefix and wrapper, at the same paths.
	mkdir -p "$r$(dirname "$PREFIX")" "$r$(dirname "$WRAPPER")"
	cp -a "$PREFIX" "$r$PREFIX"
	cp -a "$WRAPPER" "$r$WRAPPER"

	# QEMU 10 beside Debian 12's 7.2 (cpr-reboot keeps a VM's RAM in place
	# across a kexec): the host's unpacked bookworm-backports build, its
	# wrapper, and the libraries it needs. Debian 13's own QEMU is 10.
	if [ "$SUITE" = bookworm ]; then
		# shellcheck disable=SC2016 # expanded in the chroot
		libs=$(chroot "$r" sh -c 'for p in qemu-system-x86 qemu-system-common; do apt-cache show "$p/bookworm-backports" | awk -F": " "/^Depends:/{print \$2; exit}"; done' |
			tr ',' '\n' | sed 's/(.*//; s/|.*//; s/ //g' | grep -v -E '^(qemu-|seabios|ipxe|libc6$)' | sort -u)
		# shellcheck disable=SC2086 # a list of packages
		chroot "$r" apt-get install -y -q --no-install-recommends $libs
		mkdir -p "$r$QEMU10_PREFIX"
		cp -a "$QEMU10_PREFIX/." "$r$QEMU10_PREFIX/"
		cp -a "$QEMU10" "$r$QEMU10"
	fi

	# Network: DHCP (IPv4 only) on whatever NIC QEMU gives us.
	cat >"$r/etc/systemd/network/50-dhcp.network" <<-'EOF'
		[Match]
		Name=en* eth*

		[Network]
		DHCP=ipv4
		LinkLocalAddressing=no
		IPv6AcceptRA=no
	EOF
	echo 'nameserver 10.0.2.3' >"$r/etc/resolv.conf"
	chroot "$r" systemctl enable -q systemd-networkd.service
	# networkd-wait-online: one link is enough, and never wait long.
	mkdir -p "$r/etc/systemd/system/systemd-networkd-wait-online.service.d"
	cat >"$r/etc/systemd/system/systemd-networkd-wait-online.service.d/ckpt.conf" <<-'EOF'
		[Service]
		ExecStart=
		ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=20
	EOF
	chroot "$r" systemctl mask -q "${MASK[@]}"
	# CRIU without hardware breakpoints (its fault injection 130,
	# FI_NO_BREAKPOINTS: it stops restored tasks by tracing syscalls
	# instead), for every unit and so for what the guest agent runs. A
	# breakpoint is a perf event, and the first one flips a static key that
	# the kernel patches into __schedule with text_poke_bp; under TCG with two
	# vCPUs the other vCPU then ran the stale int3 ("Oops: int3" in __schedule,
	# "Fatal exception in interrupt"): two CI runs lost a 6.12 guest that way
	# during the restore after a kexec. A QEMU TCG matter, not a host's.
	mkdir -p "$r/etc/systemd/system.conf.d"
	printf '[Manager]\nDefaultEnvironment=CRIU_FAULT=130\n' >"$r/etc/systemd/system.conf.d/ckpt-tcg.conf"
	# Drivers udev would load for QEMU's emulated PC hardware (VGA, AHCI, PS/2
	# mouse, parport, watchdog, SMBus; cfg80211 for networkd's nl80211 probe):
	# unused here, and each costs seconds of module loading and probing in TCG.
	# memmap=SIZE!OFFSET -> /dev/pmem0: udev would autoload nd_e820 too, but
	# late (after the guest agent is up); load it with the other static modules.
	printf '%s\n' nd_e820 nd_pmem >"$r/etc/modules-load.d/ckpt-pmem.conf"
	printf 'blacklist %s\n' bochs cfg80211 parport_pc ppdev pcspkr iTCO_wdt i2c_i801 \
		lpc_ich psmouse ahci sr_mod >"$r/etc/modprobe.d/ckpt-guest.conf"

	if [ "$SUITE" = trixie ]; then
		# The agent on every boot and after every soft-reboot: the stock
		# unit is started by udev's SYSTEMD_WANTS when the port appears,
		# which a soft-reboot does not do again (the agent never came back).
		chroot "$r" systemctl mask -q qemu-guest-agent.service
		cat >"$r/etc/systemd/system/ckpt-guest-agent.service" <<-'EOF'
			[Unit]
			Description=QEMU guest agent (every boot and soft-reboot)
			After=systemd-udev-trigger.service
			StartLimitIntervalSec=0
			[Service]
			ExecStart=/usr/sbin/qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0
			Restart=always
			RestartSec=1
			[Install]
			WantedBy=multi-user.target
		EOF
		chroot "$r" systemctl enable -q ckpt-guest-agent.service
	fi
	chroot "$r" passwd -q -d root
	chroot "$r" apt-get clean
}

# rm_tree DIR removes DIR without ever descending into a mount point (a build
# killed inside mmdebstrap may leave /proc, /sys or /dev mounted in it).
rm_tree() {
	[ -e "$1" ] || return 0
	findmnt -rn -o TARGET | awk -v p="$1/" 'index($0, p) == 1' | sort -r |
		while read -r m; do umount -l "$m" || true; done
	rm -rf --one-file-system "$1"
}

if [ "${1:-}" = --customize ]; then # ROOT KERNELS PREFIX SUITE
	KERNELS=$3 PREFIX=$4 SUITE=$5
	customize "$2"
	exit 0
fi

# --- up to date? (fast path: no root, no lock)
want=$(
	echo "script $(sha256sum "$SELF" | cut -d' ' -f1)"
	echo "criu $("$WRAPPER" --version 2>/dev/null | head -1)"
	echo "kernels $KERNELS"
)
fresh() { [ -f "$OUT/$IMG_NAME" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$want" ]; }
if fresh; then exit 0; fi

[ "$(id -u)" = 0 ] || { echo "guest-image.sh must run as root" >&2; exit 1; }
"$WRAPPER" --version >/dev/null || { echo "guest-image.sh: no CRIU at $WRAPPER; run hack/setup.sh" >&2; exit 1; }
mkdir -p "$CACHE"
exec 9>"$CACHE/$FLAVOR.lock"
flock 9 # one builder at a time; a waiter finds the image built
if fresh; then exit 0; fi
for d in "$CACHE"/"$FLAVOR".build.*; do rm_tree "$d"; done # leftovers of killed builds

if ! command -v mmdebstrap >/dev/null; then
	log "installing mmdebstrap"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
fi

start=$(date +%s)
TMP=$(mktemp -d "$CACHE/$FLAVOR.build.XXXXXX")
trap 'rm_tree "$TMP"' EXIT
ROOT=$TMP/root
NEW=$TMP/out
mkdir -p "$NEW/boot"

log "mmdebstrap $SUITE into $ROOT"
# Documentation and translations are left out to keep the image small.
mmdebstrap --mode=root --variant=apt \
	--aptopt='APT::Install-Recommends "false"' \
	--aptopt='Acquire::Languages "none"' \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/info/*' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--dpkgopt='path-include=/usr/share/locale/locale.alias' \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--include="$(
		IFS=,
		echo "${PKGS[*]}"
	)" \
	--customize-hook="$(printf '%q ' "$SELF") --customize \"\$1\" $(printf '%q ' "$KERNELS" "$PREFIX" "$SUITE")" \
	"$SUITE" "$ROOT" \
	"deb $MIRROR $SUITE main" \
	"deb $MIRROR $SUITE-updates main" \
	"deb $SECURITY $SUITE-security main" \
	"deb $MIRROR $SUITE-backports main"

# mmdebstrap empties /etc/machine-id at the end. A fixed id keeps every boot of
# the (overlaid, throwaway) image from being a systemd "first boot".
echo 5a1c0d1e0c4b4e8f9a7d3c2b1a0f9e8d >"$ROOT/etc/machine-id"

# Kernels and initrds for QEMU's direct boot, and their releases.
if [ "$FLAVOR" = debian12 ]; then
	rels="${KERNEL_61#linux-image-} ${KERNEL_612#linux-image-}"
	printf 'KERNEL_61=%s\nKERNEL_612=%s\n' ${rels} >"$NEW/VERSIONS"
else
	rels=$(cd "$ROOT/boot" && ls vmlinuz-* | sed 's/^vmlinuz-//')
	[ "$(echo "$rels" | wc -w)" = 1 ] || { echo "guest-image.sh: want one kernel in the image, found: $rels" >&2; exit 1; }
	printf 'KERNEL=%s\n' "$rels" >"$NEW/VERSIONS"
fi
for rel in $rels; do
	for f in vmlinuz initrd.img; do
		[ -f "$ROOT/boot/$f-$rel" ] || { echo "guest-image.sh: no /boot/$f-$rel in the image" >&2; exit 1; }
		cp "$ROOT/boot/$f-$rel" "$NEW/boot/"
	done
done

log "mkfs.ext4 -d ($SIZE, sparse)"
mkfs.ext4 -q -F -L ckpt-root -d "$ROOT" "$NEW/$IMG_NAME" "$SIZE"
rm_tree "$ROOT"
echo "$want" >"$NEW/stamp"

# Swap the new image in; an interrupted build leaves the old one (or none).
rm_tree "$OUT.old"
if [ -e "$OUT" ]; then mv "$OUT" "$OUT.old"; fi
mv "$NEW" "$OUT"
rm_tree "$OUT.old"
log "built $OUT/$IMG_NAME ($(du -h "$OUT/$IMG_NAME" | cut -f1) used) in $(($(date +%s) - start)) s"
