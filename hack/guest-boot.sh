#!/bin/bash
# guest-boot.sh boots the image hack/guest-image.sh built, for humans and for
# debugging, on a throwaway qcow2 overlay (the cached image is never written).
#
#   hack/guest-boot.sh [61|612]        kernel series, default 61
#
# Environment: GUEST_DIR (run dir: overlay, serial.log, qga.sock, qmp.sock;
# default a new temp dir), GUEST_SHARE (host dir mounted at /mnt/host over 9p;
# default $GUEST_DIR/share), GUEST_PORT (TCP port forwarded from 127.0.0.1 to
# the guest's same port; default 2222), GUEST_MEM (default 2G).
# QEMU runs in the foreground; a guest reboot or kexec does not end it.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${CKPT_CACHE:-$REPO/.cache}
IMG=$CACHE/guest/debian12.img
[ -f "$IMG" ] || { echo "guest-boot.sh: no $IMG; run hack/guest-image.sh" >&2; exit 1; }

series=${1:-61}
rel=$(sed -n "s/^KERNEL_$series=//p" "$CACHE/guest/VERSIONS")
[ -n "$rel" ] || { echo "guest-boot.sh: unknown kernel series '$series' (61 or 612)" >&2; exit 1; }

DIR=${GUEST_DIR:-$(mktemp -d /tmp/ckpt-guest.XXXXXX)}
SHARE=${GUEST_SHARE:-$DIR/share}
PORT=${GUEST_PORT:-2222}
mkdir -p "$DIR" "$SHARE"
rm -f "$DIR/overlay.qcow2" "$DIR/qga.sock" "$DIR/qmp.sock"
qemu-img create -q -f qcow2 -F raw -b "$IMG" "$DIR/overlay.qcow2"

echo "guest-boot: kernel $rel; serial log $DIR/serial.log; agent $DIR/qga.sock; QMP $DIR/qmp.sock; share $SHARE" >&2
exec qemu-system-x86_64 -machine q35 -m "${GUEST_MEM:-2G}" -smp 2 -cpu max -display none \
	-serial "file:$DIR/serial.log" \
	-kernel "$CACHE/guest/boot/vmlinuz-$rel" -initrd "$CACHE/guest/boot/initrd.img-$rel" \
	-append 'root=/dev/vda rw console=ttyS0 memmap=512M!1G quiet' \
	-drive "file=$DIR/overlay.qcow2,if=virtio,format=qcow2" \
	-netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$PORT-:$PORT" -device virtio-net-pci,netdev=n0 \
	-virtfs "local,path=$SHARE,mount_tag=hostshare,security_model=none,id=hs" \
	-chardev "socket,path=$DIR/qga.sock,server=on,wait=off,id=qga0" \
	-device virtio-serial -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
	-qmp "unix:$DIR/qmp.sock,server=on,wait=off"
