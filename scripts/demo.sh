#!/usr/bin/env bash
# Builds rimgfs, writes a small three-layer sample image and mounts it: shows the merged tree,
# a whiteout, an opaque directory, a hard link and where each file came from, then unmounts.
# Everything lives in a temporary directory (the cache too) that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh

install_packages fuse3 attr python3 gcc libc6-dev ca-certificates
require_cargo
echo "==> cargo build --release"
cargo build --release
rimgfs=$(rimgfs_bin)

tmp=$(mktemp -d /tmp/rimgfs-demo.XXXXXX)
image=$tmp/sample.tar mnt=$tmp/mnt
opts=(--cache-dir "$tmp/cache")
cleanup() {
  if is_mounted "$mnt" && ! "$rimgfs" umount "$mnt"; then
    "$rimgfs" umount --lazy "$mnt" || { echo "left mounted: $mnt" >&2; return; }
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir "$mnt"
step() { printf '\n==> %s\n' "$*"; }

step "python3 scripts/make-sample-image.py $image"
python3 scripts/make-sample-image.py "$image"
step "rimgfs inspect $image"
"$rimgfs" inspect "${opts[@]}" "$image"
step "rimgfs mount $image $mnt"
"$rimgfs" mount "${opts[@]}" "$image" "$mnt"
grep " $mnt " /proc/self/mounts
step "ls -lan $mnt $mnt/etc"
ls -lan "$mnt" "$mnt/etc"
step "find $mnt"
(cd "$mnt" && find . \( -type l -printf '%M %U:%G %p -> %l\n' \) -o -printf '%M %U:%G %p\n' |
  sort -k3)
step "cat $mnt/etc/os-release"
cat "$mnt/etc/os-release"
step "provenance: getfattr -n user.rimgfs.layer (layer index and digest)"
for f in etc/hostname etc/os-release opt/app/bin/app; do
  layer=$(getfattr --absolute-names --only-values -n user.rimgfs.layer "$mnt/$f")
  printf '/%s: %s\n' "$f" "$layer"
done
step "an image xattr (PAX SCHILY.xattr): getfattr -d usr/share/doc/sample/README"
getfattr --absolute-names -d "$mnt/usr/share/doc/sample/README"
step "a hard link: one inode, two names"
stat -c '%i %h %A %n' "$mnt/usr/bin/perl" "$mnt/usr/bin/perl5.36.0"
step "whiteout: /etc/motd (layer 0) is deleted by layer 1"
if [ -e "$mnt/etc/motd" ]; then echo "error: /etc/motd is visible" >&2; exit 1; fi
echo "/etc/motd is absent from the mount; below layer 1 it was:"
"$rimgfs" cat "${opts[@]}" --layer 0 "$image" /etc/motd
step "opaque directory: layer 1 replaced /var/cache/app"
ls -lan "$mnt/var/cache/app"
step "rimgfs umount $mnt"
"$rimgfs" umount "$mnt"
is_mounted "$mnt" && { echo "error: still mounted" >&2; exit 1; }
echo "done: the sample image was mounted, shown and unmounted"
