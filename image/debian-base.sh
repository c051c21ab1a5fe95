#!/usr/bin/env bash
# Builds (or reuses) the Debian root filesystem the Tokenbridge image starts from, with mmdebstrap: Debian bookworm's
# Essential set (no apt, no compilers) plus python3 (3.11), python3-venv, ca-certificates, tzdata and libstdc++6
# (greenlet's and google-re2's manylinux wheels link it and manylinux expects it from the system). Merged /usr
# without the usrmerge package (which would pull in perl). dpkg does not install man pages, info, docs (copyright
# files stay) or translations, and that dpkg config stays in the image.
# Cached under ${TOKENBRIDGE_CACHE:-~/.cache/tokenbridge}/debian-bookworm-<key>/ (key: this script, common.sh, the
# mirrors), so a rerun does nothing: the package versions are those of the first build with that key; to pick up
# Debian's updates, pin TOKENBRIDGE_DEBIAN_SNAPSHOT (a snapshot.debian.org timestamp, e.g. 20261201T000000Z; needs
# snapshot.debian.org) or delete the directory. Needs root. Prints the rootfs tarball's path; progress on stderr.
# File mtimes are clamped to the newest Date of the suites' Release files: the same mirror state gives the same tar.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

suite=bookworm
packages=python3,python3-venv,ca-certificates,tzdata,libstdc++6
snapshot=${TOKENBRIDGE_DEBIAN_SNAPSHOT:-}
if [ -n "$snapshot" ]; then
  main_mirror="http://snapshot.debian.org/archive/debian/$snapshot"
  security_mirror="http://snapshot.debian.org/archive/debian-security/$snapshot"
else
  main_mirror=${TOKENBRIDGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
  security_mirror=${TOKENBRIDGE_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
fi
sources=("deb $main_mirror $suite main" "deb $main_mirror $suite-updates main" "deb $security_mirror $suite-security main")
key=$( { cat "$here/debian-base.sh" "$here/common.sh"; printf '%s\n' "${sources[@]}"; } | sha256sum | cut -c1-12)
out="$cache_root/debian-$suite-$key"
if [ -s "$out/rootfs.tar" ]; then echo "$out/rootfs.tar"; exit 0; fi

need_root "building the Debian base with mmdebstrap"
ensure_packages mmdebstrap debian-archive-keyring tar
with_lock "debian-$suite-$key"
if [ -s "$out/rootfs.tar" ]; then echo "$out/rootfs.tar"; exit 0; fi

work=$(mktemp -d "$cache_root/tmp.debian-$key.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT
mkdir "$work/out"
aptopts=()
[ -n "$snapshot" ] && aptopts=(--aptopt='Acquire::Check-Valid-Until "false"')
log "mmdebstrap $suite ($packages) from $main_mirror"
start=$(date +%s)
# Hooks run on the host with the chroot as $1; root mode unmounts /dev, /proc and /sys before it returns.
mmdebstrap --mode=root --variant=essential --format=directory --include="$packages" \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr "${aptopts[@]}" \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --customize-hook='rm -f "$1/etc/resolv.conf" "$1/etc/hostname" "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old' \
  --customize-hook="sed -n 's/^Date: //p' \"\$1\"/var/lib/apt/lists/*InRelease > '$work/out/release-dates'" \
  --customize-hook="chroot \"\$1\" dpkg-query -W -f '\${Package} \${Version}\n' > '$work/out/packages.txt'" \
  "$suite" "$work/rootfs" "${sources[@]}" >&2

[ -s "$work/out/release-dates" ] || die "no Release dates recorded"
epoch=$(while read -r d; do date -u -d "$d" +%s; done < "$work/out/release-dates" | sort -n | tail -1)
echo "$epoch" > "$work/out/epoch"
# The runtime mounts /dev; the device nodes mmdebstrap made for its chroot stay out of the image.
tar --sort=name --format=pax --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    --numeric-owner --one-file-system --mtime="@$epoch" --clamp-mtime --exclude='./dev/*' \
    -C "$work/rootfs" -cf "$work/out/rootfs.tar" .
rm -rf --one-file-system "$work/rootfs"
mkdir -p "$(dirname "$out")"
rm -rf "$out"
mv "$work/out" "$out"
log "Debian base ($(wc -l < "$out/packages.txt") packages, $(du -h "$out/rootfs.tar" | cut -f1)) in $(( $(date +%s) - start ))s"
echo "$out/rootfs.tar"
