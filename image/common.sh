# Shared by image/*.sh (sourced, not run). Progress goes to stderr; the scripts print only their results on stdout.

cache_root="${TOKENBRIDGE_CACHE:-$HOME/.cache/tokenbridge}"

log() { echo ">> $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

# Installs the Debian packages that are missing (CI starts from a fresh machine, as root).
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f '${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing Debian packages (${missing[*]}); run as root or install them"
  log "installing ${missing[*]}"
  if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then apt-get update -qq >&2; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

need_root() { [ "$(id -u)" -eq 0 ] || die "$1 needs root (chroot, files owned by other users)"; }

rfc3339() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ; }

# set_mtimes DIR EPOCH REFERENCE-FILE: what changed in DIR since REFERENCE-FILE was touched gets EPOCH as its mtime,
# so rebuilding the same inputs gives the same layer.
set_mtimes() {
  find "$1" -xdev -newer "$3" -print0 | xargs -0r touch --no-dereference --date="@$2"
}

# oci_finish LAYOUT REF ARCHIVE EPOCH: annotate the index entry of REF so that `ctr images import` names the image
# REF with or without --base-name (containerd 1.6 uses io.containerd.image.name as is; it keeps a full
# org.opencontainers.image.ref.name only without --base-name or with a matching one), record the platform, then
# write LAYOUT as an OCI archive: a tar of oci-layout, index.json and blobs/, sorted, owned by 0:0, times EPOCH.
oci_finish() {
  local layout=$1 ref=$2 archive=$3 epoch=$4
  umoci gc --layout "$layout"
  python3 - "$layout/index.json" "$ref" <<'EOF'
import json, sys
path, ref = sys.argv[1:]
index = json.load(open(path))
entries = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref]
assert len(entries) == 1, index
entries[0]["annotations"]["io.containerd.image.name"] = ref
entries[0]["platform"] = {"architecture": "amd64", "os": "linux"}
index["manifests"] = entries
with open(path, "w") as f:
    json.dump(index, f, sort_keys=True)
EOF
  chmod -R a+rX "$layout"
  tar --sort=name --format=ustar --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
      -C "$layout" -cf "$archive" oci-layout index.json blobs
}

# with_lock NAME: serialise builds of the same image (a test and `make image` at once).
with_lock() {
  mkdir -p "$cache_root"
  exec {lock_fd}>"$cache_root/$1.lock"
  flock "$lock_fd"
}
