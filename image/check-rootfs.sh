#!/usr/bin/env bash
# check-rootfs.sh ROOTFS: checks an unpacked Tokenbridge image (image/build.sh runs it before caching an image):
# as uid/gid 10001 in a chroot, `tokenbridge --help` lists serve and operator and the server's, the operator's and
# the gevent worker's modules import; no compiler or linker; every shared library of Python and the venv resolves;
# user and group tokenbridge are 10001. Needs root (chroot). Exits non-zero with the reason on the first failure.
set -euo pipefail
rootfs=${1:?usage: check-rootfs.sh ROOTFS}
fail() { echo "check-rootfs: $*" >&2; exit 1; }
env=(/usr/bin/env -i PATH=/opt/tokenbridge/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
     PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/nonexistent LANG=C.UTF-8)
as_user() { chroot --userspec=10001:10001 --groups=10001 "$rootfs" "${env[@]}" "$@"; }

grep -qx 'tokenbridge:x:10001:10001::/nonexistent:/usr/sbin/nologin' "$rootfs/etc/passwd" || fail "no user 10001"
grep -qx 'tokenbridge:x:10001:' "$rootfs/etc/group" || fail "no group 10001"
help=$(as_user tokenbridge --help) || fail "tokenbridge --help failed"
grep -q serve <<<"$help" && grep -q operator <<<"$help" || fail "tokenbridge --help lists no serve/operator: $help"
as_user python -c '
import os, sys
assert (os.getuid(), os.getgid()) == (10001, 10001) and set(os.getgroups()) <= {10001}, (os.getuid(), os.getgroups())
assert sys.prefix == "/opt/tokenbridge" and sys.version_info[:2] == (3, 11), (sys.prefix, sys.version)
import gevent, packaging, gunicorn.workers.ggevent
import tokenbridge_cli.cli, tokenbridge_exchange.serve, tokenbridge_operator.main
' || fail "imports failed as uid 10001"

for dir in usr/bin usr/sbin usr/local/bin usr/local/sbin opt/tokenbridge/bin; do
  for tool in cc c89 c99 gcc g++ c++ cpp clang clang++ tcc ld ld.bfd ld.gold as x86_64-linux-gnu-gcc; do
    [ ! -e "$rootfs/$dir/$tool" ] && [ ! -L "$rootfs/$dir/$tool" ] || fail "compiler/linker in the image: /$dir/$tool"
  done
  compgen -G "$rootfs/$dir/*-gcc-*" >/dev/null && fail "compiler in the image: $(compgen -G "$rootfs/$dir/*-gcc-*")"
done
[ ! -d "$rootfs/usr/lib/gcc" ] || fail "/usr/lib/gcc (a compiler's files) in the image"

missing=$(cd "$rootfs" && find opt/tokenbridge usr/bin/python3.11 -name '*.so*' -type f -o -name python3.11 -type f |
  while read -r so; do chroot "$rootfs" /usr/bin/ldd "/$so" 2>/dev/null | sed -n "s|^\s*\(\S*\) => not found|/$so: \1|p"; done)
[ -z "$missing" ] || fail "shared libraries not found: $missing"
echo "check-rootfs: ok ($rootfs)"
