#!/bin/bash
# build-deb.sh builds the Debian package an operator installs ckpt from:
# the static ckpt binary in /usr/sbin, the boot units, a commented
# /etc/ckpt/ckpt.toml and /etc/default/ckpt. It prints the .deb's path.
#
#   ./hack/build-deb.sh [OUTDIR]      (default: <repo>/.cache/deb)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-${CKPT_CACHE:-$REPO/.cache}/deb}
export PATH=/usr/local/go/bin:$PATH
cd "$REPO"

# 0.1.0+git<commit date>.<commit>, with .dirty for uncommitted changes.
ver="0.1.0"
if rev=$(git rev-parse --short=12 HEAD 2>/dev/null); then
	ver+="+git$(git log -1 --format=%cd --date=format:%Y%m%d%H%M%S).$rev"
	git diff --quiet HEAD -- 2>/dev/null || ver+=".dirty"
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
chmod 755 "$stage"
install -d "$stage/DEBIAN" "$stage/usr/sbin" "$stage/lib/systemd/system" "$stage/etc/ckpt/ckpt.toml.d" \
	"$stage/etc/default" "$stage/usr/share/doc/ckpt"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$ver" -o "$stage/usr/sbin/ckpt" ./cmd/ckpt
install -m 644 contrib/systemd/ckpt-resume-early.service contrib/systemd/ckpt-resume.service "$stage/lib/systemd/system/"
install -m 644 contrib/etc/ckpt.toml "$stage/etc/ckpt/ckpt.toml"
install -m 644 contrib/etc/default-ckpt "$stage/etc/default/ckpt"
install -m 644 README.md "$stage/usr/share/doc/ckpt/README.md"
install -m 644 contrib/debian/conffiles "$stage/DEBIAN/conffiles"
install -m 755 contrib/debian/postinst contrib/debian/prerm "$stage/DEBIAN/"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$ver/" -e "s/@SIZE@/$size/" contrib/debian/control.in >"$stage/DEBIAN/control"
mkdir -p "$OUT"
deb="$OUT/ckpt_${ver}_amd64.deb"
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$deb" >/dev/null
echo "$deb"
