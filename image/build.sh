#!/usr/bin/env bash
# Builds (or reuses) the Tokenbridge OCI image without a container engine: the same image as the Dockerfile, on
# Debian bookworm's own python3 (3.11) instead of python:3.11-slim. Two layers:
#   1. the Debian base from image/debian-base.sh (mmdebstrap: Essential set + python3, python3-venv, ca-certificates,
#      tzdata, libstdc++6; no apt, no compilers, no docs);
#   2. a venv at /opt/tokenbridge with the project's wheel and its runtime dependencies (no dev extras), installed
#      with Debian's python3 in a chroot from a wheelhouse made on the host (`pip wheel --no-deps` of the files the
#      Dockerfile COPYs, `pip download --only-binary=:all:` of the dependencies for cp311 manylinux x86_64, with
#      constraints.txt from the repository root when it exists); user and group tokenbridge (10001).
# Config as the Dockerfile: USER 10001:10001, ENTRYPOINT ["tokenbridge"], CMD ["serve","--kubernetes","--bind",
# "0.0.0.0:8080"], PATH=/opt/tokenbridge/bin:..., PYTHONDONTWRITEBYTECODE=1, PYTHONUNBUFFERED=1, WORKDIR /tmp,
# EXPOSE 8080, org.opencontainers.image.* labels (revision: the last commit of the inputs, "-dirty" when they have
# uncommitted changes; created: SOURCE_DATE_EPOCH, default that commit's time; new files' mtimes are clamped to it).
# Assembled with umoci; before it is cached the image is unpacked and checked (tokenbridge --help and the imports as
# uid 10001 in a chroot, no compiler, no missing shared library).
# Cached under ${TOKENBRIDGE_CACHE:-~/.cache/tokenbridge}/image-<key>/ (key: the source roots, pyproject.toml,
# README.md, constraints.txt, the scripts in image/, the Debian base, the reference and labels), so a rerun with the
# same inputs does nothing and prints the same lines:
#   <cache>/image-<key>/tokenbridge-<version>.oci.tar    OCI archive (tar of the OCI layout in <cache>/image-<key>/layout)
#   docker.io/library/tokenbridge:<version>              the image reference (last line)
# `ctr -n k8s.io images import <archive>` names the image exactly that reference (see image/README.md); it is what
# Kubernetes makes of the chart's default image `tokenbridge:<appVersion>`. TOKENBRIDGE_IMAGE_NAME overrides the
# repository part. Needs root (chroot); installs mmdebstrap and umoci when missing. Progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
. "$here/common.sh"

# version, licence (SPDX string or {text = ...}) and source URL from pyproject.toml
IFS=$'\t' read -r version license source_url < <(python3 -c '
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
license = project.get("license", "")
license = license.get("text", "") if isinstance(license, dict) else license
urls = project.get("urls", {})
print(project["version"], license or "NOASSERTION", urls.get("Source") or urls.get("Homepage") or "NOASSERTION", sep="\t")
' "$repo/pyproject.toml")
name=${TOKENBRIDGE_IMAGE_NAME:-docker.io/library/tokenbridge}
ref="$name:$version"
sources=(tokenbridge tokenbridge_cli operator exchange_server)
constraints="$repo/constraints.txt"

# What goes in: the files the Dockerfile COPYs (without caches and egg-info, as .dockerignore), the constraints.
cd "$repo"
mapfile -d '' files < <(find "${sources[@]}" \( -name __pycache__ -o -name '*.egg-info' \) -prune -o \
                          -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z)
files+=(pyproject.toml README.md)
[ -f LICENSE ] && files+=(LICENSE) # pyproject.toml's license-files
inputs=("${sources[@]}" pyproject.toml README.md LICENSE constraints.txt image)
if git rev-parse --git-dir >/dev/null 2>&1; then
  revision=$(git log -1 --format=%H -- "${inputs[@]}")
  [ -z "$(git status --porcelain -- "${inputs[@]}")" ] || revision="$revision-dirty"
  epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct -- "${inputs[@]}")}
else
  revision=unknown
  epoch=${SOURCE_DATE_EPOCH:-$(stat -c %Y pyproject.toml)}
fi
created=$(rfc3339 "$epoch")
labels=(
  "org.opencontainers.image.title=tokenbridge"
  "org.opencontainers.image.description=Kubernetes-native OAuth 2.0 token exchange (RFC 8693 / RFC 7523)"
  "org.opencontainers.image.version=$version"
  "org.opencontainers.image.source=$source_url"
  "org.opencontainers.image.licenses=$license"
  "org.opencontainers.image.revision=$revision"
  "org.opencontainers.image.created=$created"
)

base_tar=$(bash "$here/debian-base.sh")
key=$( { sha256sum "${files[@]}"
         if [ -f "$constraints" ]; then sha256sum constraints.txt; else echo "no constraints.txt"; fi
         sha256sum "$here"/*.sh "$base_tar"
         printf '%s\n' "$ref" "${labels[@]}"; } | sha256sum | cut -c1-12)
out="$cache_root/image-$key"
archive="$out/tokenbridge-$version.oci.tar"
result() { echo "$archive"; echo "$ref"; }
if [ -s "$out/image.json" ]; then result; exit 0; fi

need_root "the image build"
ensure_packages umoci tar util-linux coreutils
with_lock "image-$key"
if [ -s "$out/image.json" ]; then result; exit 0; fi
start=$(date +%s)
work=$(mktemp -d "$cache_root/tmp.image-$key.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT
mkdir "$work/out"

# ---- the wheelhouse, on the host ----------------------------------------------------------------------------------
py=${TOKENBRIDGE_PYTHON:-$repo/.venv/bin/python}
[ -x "$py" ] || py=python3
mkdir "$work/context" "$work/wheelhouse"
cp --parents -- "${files[@]}" "$work/context/"
log "building the tokenbridge wheel"
"$py" -m pip wheel -q --no-deps --disable-pip-version-check -w "$work/wheelhouse" "$work/context" \
  > "$work/wheel.log" 2>&1 || { cat "$work/wheel.log" >&2; die "pip wheel failed"; }
wheel=$(ls "$work/wheelhouse"/tokenbridge-"$version"-*.whl)
cons=()
[ -f "$constraints" ] && cons=(-c "$constraints")
# Debian bookworm has glibc 2.36: any manylinux wheel up to manylinux_2_36 runs there.
platforms=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
for minor in $(seq 5 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
log "downloading the runtime dependencies (cp311 manylinux x86_64 wheels)${cons:+ with constraints.txt}"
"$py" -m pip download -q --disable-pip-version-check --only-binary=:all: --implementation cp --python-version 3.11 \
  --abi cp311 "${platforms[@]}" "${cons[@]}" -d "$work/wheelhouse" "$wheel" >&2

# ---- layer 1: the Debian base --------------------------------------------------------------------------------------
layout="$work/out/layout"
bundle="$work/bundle"
rootfs="$bundle/rootfs"
base_epoch=$(cat "$(dirname "$base_tar")/epoch")
umoci init --layout "$layout"
umoci new --image "$layout:$ref"
umoci unpack --image "$layout:$ref" "$bundle" >/dev/null
tar -C "$rootfs" --numeric-owner -xf "$base_tar"
touch --no-dereference --date="@$base_epoch" "$rootfs"
umoci repack --refresh-bundle --image "$layout:$ref" --history.created "$(rfc3339 "$base_epoch")" \
  --history.created_by "image/debian-base.sh: mmdebstrap --variant=essential bookworm + python3 python3-venv ca-certificates tzdata libstdc++6" \
  "$bundle"

# ---- layer 2: the venv and the user --------------------------------------------------------------------------------
touch "$work/marker"
sleep 1 # so that every change below is newer than the marker
cp -r "$work/wheelhouse" "$rootfs/wheelhouse"
chroot_cons=()
if [ -f "$constraints" ]; then cp "$constraints" "$rootfs/constraints.txt"; chroot_cons=(-c /constraints.txt); fi
log "installing tokenbridge $version into /opt/tokenbridge with Debian's python3 (chroot)"
chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 PIP_CONFIG_FILE=/dev/null \
  PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 SOURCE_DATE_EPOCH="$epoch" \
  sh -euc 'python3 -m venv /opt/tokenbridge
           /opt/tokenbridge/bin/pip install -q --no-index --find-links /wheelhouse "$@" "tokenbridge==$0"' \
  "$version" "${chroot_cons[@]}" >&2
rm -rf "$rootfs/wheelhouse" "$rootfs/constraints.txt" "$rootfs/root/.cache" "$rootfs/tmp/"*
grep -q '^tokenbridge:' "$rootfs/etc/group" || echo 'tokenbridge:x:10001:' >> "$rootfs/etc/group"
grep -q '^tokenbridge:' "$rootfs/etc/passwd" ||
  echo 'tokenbridge:x:10001:10001::/nonexistent:/usr/sbin/nologin' >> "$rootfs/etc/passwd"
chroot "$rootfs" /opt/tokenbridge/bin/pip freeze --all --disable-pip-version-check > "$work/out/python-packages.txt"
set_mtimes "$rootfs" "$epoch" "$work/marker"
umoci repack --image "$layout:$ref" --history.created "$created" \
  --history.created_by "image/build.sh: python3 -m venv /opt/tokenbridge; pip install --no-index tokenbridge==$version (wheelhouse); user tokenbridge 10001:10001" \
  "$bundle"

# ---- config --------------------------------------------------------------------------------------------------------
config=(--config.user 10001:10001 --config.entrypoint tokenbridge
        --config.cmd serve --config.cmd=--kubernetes --config.cmd=--bind --config.cmd 0.0.0.0:8080
        --config.env PATH=/opt/tokenbridge/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
        --config.env PYTHONDONTWRITEBYTECODE=1 --config.env PYTHONUNBUFFERED=1
        --config.workingdir /tmp --config.exposedports 8080/tcp
        --created "$created" --architecture amd64 --os linux --no-history)
for label in "${labels[@]}"; do config+=(--config.label "$label" --manifest.annotation "$label"); done
umoci config --image "$layout:$ref" "${config[@]}"
oci_finish "$layout" "$ref" "$work/out/$(basename "$archive")" "$epoch"

# ---- check what was built, from the image itself --------------------------------------------------------------------
log "checking the image"
rm -rf --one-file-system "$bundle"
umoci unpack --image "$layout:$ref" "$work/check" >/dev/null
bash "$here/check-rootfs.sh" "$work/check/rootfs" >&2
rm -rf --one-file-system "$work/check"
cp "$(dirname "$base_tar")/packages.txt" "$work/out/debian-packages.txt"
rm -rf "$out"
mv "$work/out" "$out"
# image.json last: its presence marks a complete cache entry.
python3 - "$out" "$ref" "$archive" "$version" "$revision" "$created" > "$out/image.json.tmp" <<'EOF'
import json, sys
out, ref, archive, version, revision, created = sys.argv[1:]
(entry,) = json.load(open(f"{out}/layout/index.json"))["manifests"]
manifest = json.load(open(f"{out}/layout/blobs/{entry['digest'].replace(':', '/')}"))
json.dump({"reference": ref, "archive": archive, "layout": f"{out}/layout", "manifest_digest": entry["digest"],
           "config_digest": manifest["config"]["digest"], "layers": [layer["digest"] for layer in manifest["layers"]],
           "version": version, "revision": revision, "created": created}, sys.stdout, indent=2)
EOF
mv "$out/image.json.tmp" "$out/image.json"
log "image $ref: $(du -h "$archive" | cut -f1) archive, built in $(( $(date +%s) - start ))s"
# Keep the three newest images: each is ~100 MB twice (layout and archive).
ls -1dt "$cache_root"/image-*/ 2>/dev/null | tail -n +4 | while read -r old; do
  [ "${old%/}" = "$out" ] || rm -rf --one-file-system "$old"
done
result
