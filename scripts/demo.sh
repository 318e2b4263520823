#!/usr/bin/env bash
# Builds rimgfs and installs it with scripts/install.sh (binary, manual, shell completions;
# PREFIX=/usr/local unless set), writes a small three-layer sample image and mounts it
# read-only: shows the
# merged tree, a whiteout, an opaque directory, a hard link and where each file came from, then
# unmounts. Then mounts it writable with an upper directory: writes a file, deletes a lower one
# and shows the whiteout in the upper directory; unmounts, lists the changes with `rimgfs diff`,
# makes a new image of them with `rimgfs commit` and mounts that read-only to show them.
# As root, it mounts the image once more the way fstab entries are, with mount(8).
# Everything but the installed files lives in a temporary directory (the cache too) that is
# removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh

install_packages fuse3 attr python3 gcc libc6-dev ca-certificates
require_cargo
echo "==> cargo build --release"
cargo build --release
rimgfs=$(rimgfs_bin)
scripts/install.sh "$rimgfs"

tmp=$(mktemp -d /tmp/rimgfs-demo.XXXXXX)
image=$tmp/sample.tar mnt=$tmp/mnt upper=$tmp/upper new=$tmp/new.tar
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
step "rimgfs mount --read-only $image $mnt"
"$rimgfs" mount "${opts[@]}" --read-only "$image" "$mnt"
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

step "writable: rimgfs mount --upper $upper $image $mnt"
"$rimgfs" mount "${opts[@]}" --upper "$upper" "$image" "$mnt"
grep " $mnt " /proc/self/mounts
step "write a new file, append to a lower one (copy-up) and delete a lower one"
echo "mkdir $mnt/etc/motd.d; echo 'written through rimgfs' > $mnt/etc/motd.d/greeting"
mkdir "$mnt/etc/motd.d"
echo 'written through rimgfs' > "$mnt/etc/motd.d/greeting"
echo "echo '10.0.0.2 db' >> $mnt/etc/hosts"
echo '10.0.0.2 db' >> "$mnt/etc/hosts"
echo "rm $mnt/var/log/dpkg.log"
rm "$mnt/var/log/dpkg.log"
cat "$mnt/etc/motd.d/greeting" "$mnt/etc/hosts"
if [ -e "$mnt/var/log/dpkg.log" ]; then echo "error: dpkg.log is still visible" >&2; exit 1; fi
printf '/etc/motd.d/greeting: %s\n' \
  "$(getfattr --absolute-names --only-values -n user.rimgfs.layer "$mnt/etc/motd.d/greeting")"
step "the upper directory, in overlayfs format: ls -lnR $upper"
(cd "$upper" && ls -lnR)
wh=$upper/var/log/dpkg.log
if [ -c "$wh" ]; then
  echo "var/log/dpkg.log in the upper is a whiteout: $(stat -c '%F %t/%T' "$wh")"
elif [ -f "$upper/var/log/.wh.dpkg.log" ]; then
  echo "var/log/.wh.dpkg.log in the upper is a whiteout (the format without privileges)"
else
  echo "error: no whiteout for var/log/dpkg.log in $upper" >&2; exit 1
fi
step "rimgfs umount $mnt"
"$rimgfs" umount "$mnt"
step "rimgfs diff --upper $upper $image"
"$rimgfs" diff "${opts[@]}" --upper "$upper" "$image"
step "rimgfs commit --upper $upper -o $new --tag sample:edited $image"
"$rimgfs" commit "${opts[@]}" --upper "$upper" -o "$new" --tag sample:edited \
  -m "demo: a greeting, a host, no dpkg.log" "$image"
"$rimgfs" inspect "${opts[@]}" "$new"
step "rimgfs mount --read-only $new $mnt: the changes are in the new image"
"$rimgfs" mount "${opts[@]}" --read-only "$new" "$mnt"
cat "$mnt/etc/motd.d/greeting" "$mnt/etc/hosts"
printf '/etc/motd.d/greeting: %s\n' \
  "$(getfattr --absolute-names --only-values -n user.rimgfs.layer "$mnt/etc/motd.d/greeting")"
if [ -e "$mnt/var/log/dpkg.log" ]; then echo "error: dpkg.log is back" >&2; exit 1; fi
ls -lan "$mnt/var/log"
step "rimgfs umount $mnt"
"$rimgfs" umount "$mnt"
is_mounted "$mnt" && { echo "error: still mounted" >&2; exit 1; }

# mount.fuse3 runs `rimgfs` through /bin/sh with the shell's default PATH.
if [ "$(id -u)" -eq 0 ] && [ -n "$(env -i /bin/sh -c 'command -v rimgfs')" ]; then
  step "mount -t fuse.rimgfs -o ro,nosuid,nodev,cache_dir=$tmp/cache $image $mnt"
  mount -t fuse.rimgfs -o "ro,nosuid,nodev,cache_dir=$tmp/cache" "$image" "$mnt"
  grep " $mnt " /proc/self/mountinfo
  cat "$mnt/etc/os-release"
  step "umount $mnt"
  umount "$mnt"
else
  step "mount(8) skipped: needs root and rimgfs on /bin/sh's default PATH"
fi
echo "done: the sample image was mounted read-only and writable, its changes committed to a"
echo "new image, mounted and unmounted"
