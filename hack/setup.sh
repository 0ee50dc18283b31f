#!/bin/bash
# setup.sh takes a fresh Debian 12 (bookworm) machine, as root, to everything
# ckpt and its tests need. It is idempotent: a second run only checks.
#
#   CRIU 4.2.1 (Debian sid) in a private prefix run through its own loader,
#   iptables, runc, busybox-static, QEMU, and the Debian kernels the guest
#   tests boot, unpacked (never installed) under the download cache.
#
# Downloads are cached in $CKPT_CACHE (default: <repo>/.cache, git-ignored).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${CKPT_CACHE:-$REPO/.cache}
PREFIX=${CKPT_CRIU_PREFIX:-/opt/ckpt/criu}
WRAPPER=/usr/local/sbin/criu

# Pinned guest kernels (see hack/README.md for why these and how to bump).
KERNEL_61=${CKPT_KERNEL_61:-linux-image-6.1.0-56-amd64}
KERNEL_612=${CKPT_KERNEL_612:-linux-image-6.12.95+deb12-amd64}

SID_PKGS=(criu libcompel1 libnet9 libnl-3-200)
TRIXIE_PKGS=(libc6 libgnutls30t64 libnftables1 libprotobuf-c1 libbsd0 libuuid1
	libnftnl11 libxtables12 libjansson4 libmnl0 libidn2-0 libunistring5
	libtasn1-6 libnettle8t64 libhogweed6t64 libgmp10 libp11-kit0 libffi8 libmd0)
HOST_PKGS=(iptables runc busybox-static qemu-system-x86 qemu-utils cpio xz-utils binutils
	gzip zstd procps iproute2 util-linux e2fsprogs ca-certificates
	libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu docker.io)
# QEMU 10 from bookworm-backports, unpacked beside bookworm's 7.2 (cpr-reboot,
# mapped-ram and multifd need >= 9). Its libraries are bookworm's.
QEMU10_PREFIX=${CKPT_QEMU10_PREFIX:-/opt/ckpt/qemu10}
QEMU10=/usr/local/bin/qemu10-system-x86_64
QEMU10_PKGS=(qemu-system-x86 qemu-system-common qemu-system-data)

log() { printf '[setup] %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "setup.sh must run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$CACHE/debs"

# --- apt suites: bookworm-backports, trixie and sid at pin priority 100, so
# nothing on the host is upgraded from them unless asked for by name.
SRC=/etc/apt/sources.list.d/ckpt-extra.sources
PIN=/etc/apt/preferences.d/ckpt-extra
want_src='Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports trixie sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg'
want_pin='Package: *
Pin: release n=trixie
Pin-Priority: 100

Package: *
Pin: release n=sid
Pin-Priority: 100

Package: *
Pin: release n=bookworm-backports
Pin-Priority: 100'
stamp=$CACHE/apt-updated
if [ "$(cat $SRC 2>/dev/null)" != "$want_src" ] || [ "$(cat $PIN 2>/dev/null)" != "$want_pin" ] ||
	[ -z "$(find "$stamp" -mmin -720 2>/dev/null)" ] || ! apt-cache show criu=4.2.1-1 >/dev/null 2>&1; then
	printf '%s\n' "$want_src" >$SRC
	printf '%s\n' "$want_pin" >$PIN
	log "apt-get update"
	apt-get update -qq || log "apt-get update reported errors (unreachable third-party sources are ignored)"
	touch "$stamp"
fi

# --- host packages
missing=()
for p in "${HOST_PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing ${missing[*]}"
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# podman after runc, in a call of its own and without recommends: its
# "crun | runc" dependency is then met by runc. Debian 12's crun has no
# CRIU, so podman could not checkpoint through it. catatonit is a pod's
# infra process.
missing=()
for p in podman catatonit; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing ${missing[*]}"
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# etcd for the fleet lock's tests, which run their own etcd on free ports:
# the package's service is not left running where setup installed it.
if ! dpkg-query -W -f='${Status}' etcd-server 2>/dev/null | grep -q 'install ok installed'; then
	log "installing etcd-server"
	apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
	if [ -d /run/systemd/system ]; then
		systemctl disable --now etcd.service >/dev/null 2>&1 || true
	fi
fi
if dpkg-query -W -f='${Status}' criu 2>/dev/null | grep -q 'install ok installed'; then
	log "removing Debian 12's criu 3.17 (fails on kernels >= 6.13)"
	apt-get remove -y -qq criu >/dev/null
fi

# --- CRIU 4.2.1 in a private prefix
download() { # suite pkg...
	local suite=$1; shift
	local p
	for p in "$@"; do
		local v
		v=$(apt-cache show "$p/$suite" 2>/dev/null | awk '/^Version:/{print $2; exit}')
		[ -n "$v" ] || { echo "setup.sh: $p not found in $suite" >&2; exit 1; }
		local f
		f=$(ls "$CACHE/debs/${p}_${v//:/%3a}_"*.deb 2>/dev/null | head -1 || true)
		if [ -z "$f" ]; then
			(cd "$CACHE/debs" && apt-get download -qq -o APT::Sandbox::User=root "$p/$suite" >/dev/null)
			f=$(ls "$CACHE/debs/${p}_${v//:/%3a}_"*.deb | head -1)
		fi
		echo "$f"
	done
}
criu_ok() { [ -x $WRAPPER ] && $WRAPPER --version 2>/dev/null | grep -q 'Version: 4.2'; }
if ! criu_ok; then
	log "installing CRIU 4.2.1 into $PREFIX"
	debs=$(download sid "${SID_PKGS[@]}"; download trixie "${TRIXIE_PKGS[@]}")
	rm -rf "$PREFIX.new" && mkdir -p "$PREFIX.new"
	for d in $debs; do dpkg -x "$d" "$PREFIX.new"; done
	rm -rf "$PREFIX" && mv "$PREFIX.new" "$PREFIX"
fi
LOADER=$(find "$PREFIX" -name 'ld-linux-x86-64.so.2' -type f | head -1)
[ -n "$LOADER" ] || { echo "setup.sh: no loader in $PREFIX" >&2; exit 1; }
LIBPATH=$PREFIX/usr/lib/x86_64-linux-gnu:$PREFIX/lib/x86_64-linux-gnu
want_wrapper="#!/bin/sh
# CRIU 4.2.1 from Debian sid, run through its own glibc (installed by ckpt's hack/setup.sh).
exec $LOADER --library-path $LIBPATH $PREFIX/usr/sbin/criu \"\$@\""
if [ "$(cat $WRAPPER 2>/dev/null)" != "$want_wrapper" ]; then
	printf '%s\n' "$want_wrapper" >$WRAPPER
	chmod 755 $WRAPPER
fi
criu_ok || { echo "setup.sh: $WRAPPER does not run" >&2; exit 1; }
if ! $WRAPPER check >"$CACHE/criu-check.log" 2>&1 || ! grep -q 'Looks good' "$CACHE/criu-check.log"; then
	cat "$CACHE/criu-check.log" >&2
	echo "setup.sh: criu check failed" >&2
	exit 1
fi
log "criu: $($WRAPPER --version | head -1), criu check: Looks good"

# --- QEMU 10 in a private prefix
if ! "$QEMU10" --version 2>/dev/null | grep -q 'version 10\.'; then
	log "installing QEMU 10 (bookworm-backports) into $QEMU10_PREFIX"
	libs=$(for p in "${QEMU10_PKGS[@]:0:2}"; do apt-cache show "$p/bookworm-backports" | awk -F': ' '/^Depends:/{print $2; exit}'; done |
		tr ',' '\n' | sed 's/(.*//; s/|.*//; s/ //g' | grep -v -E '^(qemu-|seabios|ipxe|libc6$)' | sort -u)
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $libs >/dev/null
	debs=$(download bookworm-backports "${QEMU10_PKGS[@]}")
	rm -rf "$QEMU10_PREFIX.new" && mkdir -p "$QEMU10_PREFIX.new"
	for d in $debs; do dpkg -x "$d" "$QEMU10_PREFIX.new"; done
	# Firmware comes from the host's seabios and ipxe-qemu (qemu-system-x86's deps).
	ln -sfn /usr/share/seabios "$QEMU10_PREFIX.new/usr/share/seabios"
	ln -sfn /usr/lib/ipxe "$QEMU10_PREFIX.new/usr/lib/ipxe"
	rm -rf "$QEMU10_PREFIX" && mv "$QEMU10_PREFIX.new" "$QEMU10_PREFIX"
	cat >"$QEMU10" <<WRAP
#!/bin/sh
# QEMU 10 from bookworm-backports, unpacked by ckpt's hack/setup.sh.
QEMU_MODULE_DIR=$QEMU10_PREFIX/usr/lib/x86_64-linux-gnu/qemu exec $QEMU10_PREFIX/usr/bin/qemu-system-x86_64 -L $QEMU10_PREFIX/usr/share/qemu "\$@"
WRAP
	chmod 755 "$QEMU10"
fi
"$QEMU10" --version | grep -q 'version 10\.' || { echo "setup.sh: $QEMU10 does not run" >&2; exit 1; }
log "qemu: $(qemu-system-x86_64 --version | head -1 | awk '{print $4}') and $($QEMU10 --version | head -1 | awk '{print $4}') ($QEMU10)"

# --- libvirtd for qemu:///system (the libvirt backend's tests). Under systemd
# the package's units start it; on a host without systemd (a container) start
# the daemons directly.
# Without udev, /dev/kvm stays root:root 0600. libvirt probes QEMU as root
# but checks /dev/kvm as libvirt-qemu, so it found its capability cache stale
# on every domain definition and re-probed QEMU 16 times (32 s a define).
# Give the node the group and mode Debian's udev rule gives it.
if [ -c /dev/kvm ] && [ "$(stat -c %G /dev/kvm)" = root ]; then
	chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi
# A socket left by a daemon that no longer runs (a restarted container keeps
# /run) refuses connections: ask the daemon, not the socket file.
libvirt_answers() { virsh -c qemu:///system version --daemon >/dev/null 2>&1; }
if ! libvirt_answers; then
	if [ -d /run/systemd/system ]; then
		systemctl start virtlogd.socket libvirtd.socket libvirtd.service
	else
		pgrep -x virtlogd >/dev/null || { rm -f /run/libvirt/virtlogd-sock /run/libvirt/virtlogd-admin-sock; virtlogd -d; }
		if ! pgrep -x libvirtd >/dev/null; then
			rm -f /run/libvirt/libvirt-sock /run/libvirt/libvirt-sock-ro /run/libvirt/libvirt-admin-sock /run/libvirtd.pid
			libvirtd -d
		fi
	fi
	for _ in $(seq 150); do libvirt_answers && break; sleep 0.2; done
fi
libvirt_answers || { echo "setup.sh: libvirtd does not answer" >&2; virsh -c qemu:///system version --daemon >&2; exit 1; }
log "libvirt: $(virsh -c qemu:///system version --daemon | awk '/daemon/{print $NF}')"

# --- podman: its containers run under runc, and within this host's limits.
# podman raises a container's RLIMIT_NOFILE and RLIMIT_NPROC to its own
# defaults, above the hard limits of a host that is itself a container
# (this CI's): runc then fails with "error setting rlimit type 7". Only
# there, a drop-in sets the defaults to what the host allows.
PODMAN_LIMITS=/etc/containers/containers.conf.d/50-ckpt-host-limits.conf
podman_runs() { # [show]: print podman's error
	local d rc
	d=$(mktemp -d)
	mkdir "$d/bin" && cp /bin/busybox "$d/bin/"
	if [ "${1:-}" = show ]; then
		podman run --rm --network none --rootfs "$d" /bin/busybox true >/dev/null
	else
		podman run --rm --network none --rootfs "$d" /bin/busybox true >/dev/null 2>&1
	fi
	rc=$?
	rm -rf "$d"
	return $rc
}
if [ ! -f "$PODMAN_LIMITS" ] && ! podman_runs; then
	mkdir -p "$(dirname "$PODMAN_LIMITS")"
	printf '# Written by ckpt hack/setup.sh: podman'"'"'s default rlimits exceed this host'"'"'s hard limits.\n[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=4096:4096"]\n' \
		"$(ulimit -Hn)" "$(ulimit -Hn)" >"$PODMAN_LIMITS"
	log "podman: default rlimits lowered to this host's limits ($PODMAN_LIMITS)"
fi
podman_runs show || { echo "setup.sh: podman cannot run a container" >&2; exit 1; }
[ "$(podman info --format '{{.Host.OCIRuntime.Name}}')" = runc ] ||
	{ echo "setup.sh: podman does not use runc (crun cannot checkpoint on Debian 12): set runtime = \"runc\" in /etc/containers/containers.conf" >&2; exit 1; }
log "podman: $(podman version --format '{{.Client.Version}}') with runc"

# --- dockerd, with the experimental features its checkpoint and restore
# need (the docker backend's tests). An existing daemon.json is left alone
# unless it lacks the setting, which is then added.
DJ=/etc/docker/daemon.json
mkdir -p /etc/docker
if [ ! -s "$DJ" ]; then
	echo '{"experimental": true}' >"$DJ"
elif ! grep -q '"experimental": *true' "$DJ"; then
	python3 -c 'import json,sys; p=sys.argv[1]; d=json.load(open(p)); d["experimental"]=True; json.dump(d,open(p,"w"),indent=2)' "$DJ"
fi
# A daemon started without the setting (say by the package's own init
# script, before daemon.json had it) is restarted.
if docker info >/dev/null 2>&1 && [ "$(docker info --format '{{.ExperimentalBuild}}')" != true ]; then
	if [ -d /run/systemd/system ]; then
		systemctl stop docker.service
	else
		pkill -x dockerd
		for _ in $(seq 50); do pgrep -x dockerd >/dev/null || break; sleep 0.2; done
	fi
fi
if ! docker info >/dev/null 2>&1; then
	if [ -d /run/systemd/system ]; then
		systemctl restart containerd.service docker.service
	else
		pgrep -x containerd >/dev/null || { containerd >/var/log/containerd.log 2>&1 & }
		for _ in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.2; done
		PATH=/usr/local/sbin:$PATH nohup dockerd --containerd /run/containerd/containerd.sock >/var/log/dockerd.log 2>&1 &
	fi
	for _ in $(seq 100); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
fi
[ "$(docker info --format '{{.ExperimentalBuild}}' 2>/dev/null)" = true ] || { echo "setup.sh: dockerd does not run with experimental features" >&2; exit 1; }
log "docker: $(docker info --format '{{.ServerVersion}}')"

# --- guest kernels, unpacked under the cache (the host's /boot is untouched)
unpack_kernel() { # suite pkg dir
	local dir=$CACHE/kernels/$3
	if [ ! -f "$dir/.done" ]; then
		log "unpacking $2 ($1)"
		local deb
		deb=$(download "$1" "$2")
		rm -rf "$dir" && mkdir -p "$dir"
		dpkg -x "$deb" "$dir"
		touch "$dir/.done"
	fi
}
unpack_kernel bookworm-security "$KERNEL_61" 6.1 2>/dev/null || unpack_kernel bookworm "$KERNEL_61" 6.1
unpack_kernel bookworm-backports "$KERNEL_612" 6.12
log "guest kernels: $(ls "$CACHE"/kernels/*/boot/vmlinuz-* | xargs -n1 basename | tr '\n' ' ')"
log "ok"
