#!/usr/bin/env bash
# Builds (or reuses) the pause image (the pod sandbox's first container) from source, so the test node pulls nothing:
# build/pause/linux/pause.c of the k8s.io/kubernetes module that tests/cluster/go.mod pins, compiled as the upstream
# Makefile does (gcc -Os -Wall -Werror -static -DVERSION=v<TAG>-<module version>), in a one-file image shaped like
# upstream's (/pause, USER 65535:65535, ENTRYPOINT ["/pause"]) named registry.k8s.io/pause:<TAG>, the reference the
# node's containerd is configured with (sandbox_image).
# Cached under ${TOKENBRIDGE_CACHE:-~/.cache/tokenbridge}/pause-<key>/ (key: pause.c, this script, common.sh, gcc's
# version); prints the OCI archive's path, then the reference (last line). Progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
. "$here/common.sh"

module_dir=$(cd "$repo/tests/cluster" && go mod download k8s.io/kubernetes >&2 && go list -m -f '{{.Dir}} {{.Version}}' k8s.io/kubernetes)
read -r kube_dir kube_version <<<"$module_dir"
src="$kube_dir/build/pause/linux/pause.c"
[ -f "$src" ] || die "no $src"
tag=$(sed -n 's/^TAG ?= *//p' "$kube_dir/build/pause/Makefile")
[ -n "$tag" ] || die "no TAG in $kube_dir/build/pause/Makefile"
ref="registry.k8s.io/pause:$tag"
command -v gcc >/dev/null || ensure_packages gcc libc6-dev
key=$( { sha256sum "$src" "$here/build-pause.sh" "$here/common.sh"; gcc --version | head -1; echo "$ref $kube_version"; } |
       sha256sum | cut -c1-12)
out="$cache_root/pause-$key"
archive="$out/pause-$tag.oci.tar"
result() { echo "$archive"; echo "$ref"; }
if [ -s "$out/image.json" ]; then result; exit 0; fi

ensure_packages umoci tar libc6-dev
with_lock "pause-$key"
if [ -s "$out/image.json" ]; then result; exit 0; fi
work=$(mktemp -d "$cache_root/tmp.pause-$key.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT
mkdir "$work/out"
epoch=$(stat -c %Y "$src")
created=$(rfc3339 "$epoch")

log "compiling pause $tag from $src"
gcc -Os -Wall -Werror -static -DVERSION="v$tag-$kube_version" -o "$work/pause" "$src"
strip "$work/pause"
"$work/pause" -v | grep -q "v$tag" || die "the built pause does not report v$tag"

layout="$work/out/layout"
umoci init --layout "$layout"
umoci new --image "$layout:$ref"
umoci unpack --image "$layout:$ref" "$work/bundle" >/dev/null
install -m 0755 "$work/pause" "$work/bundle/rootfs/pause"
touch --no-dereference --date="@$epoch" "$work/bundle/rootfs/pause" "$work/bundle/rootfs"
umoci repack --image "$layout:$ref" --history.created "$created" \
  --history.created_by "image/build-pause.sh: gcc -Os -static $src" "$work/bundle"
umoci config --image "$layout:$ref" --config.user 65535:65535 --config.entrypoint /pause \
  --created "$created" --architecture amd64 --os linux --no-history \
  --config.label "org.opencontainers.image.version=$tag" \
  --config.label "org.opencontainers.image.source=https://github.com/kubernetes/kubernetes/tree/$kube_version/build/pause"
oci_finish "$layout" "$ref" "$work/out/$(basename "$archive")" "$epoch"
rm -rf "$out"
mv "$work/out" "$out"
printf '{"reference": "%s", "archive": "%s"}\n' "$ref" "$archive" > "$out/image.json"
log "pause image $ref built"
result
