#!/usr/bin/env bash
# Benchmarks rimgfs against kernel overlayfs and fuse-overlayfs serving the same image (the
# latter two over its layers extracted to disk): mount time, a metadata walk, sequential reads
# of big files, reads of every small file, and the daemon's memory per entry. Cold runs drop
# the page, dentry and inode caches first. Needs root; not part of CI.
#
#   scripts/bench.sh            # RUNS=N sets the runs per cold measurement (default 5)
#
# Prints a table and writes it to target/bench/results.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh
[ "$(id -u)" -eq 0 ] || { echo "bench.sh needs root (overlayfs, drop_caches)" >&2; exit 1; }
install_packages fuse3 attr python3 gcc libc6-dev ca-certificates hyperfine fuse-overlayfs
require_cargo
cargo build --release
rimgfs=$(rimgfs_bin)

runs=${RUNS:-5}
work=$PWD/target/bench
image=$work/image.tar cache=$work/cache layers=$work/layers out=$work/out
m_r=$work/mnt-rimgfs m_k=$work/mnt-overlayfs m_f=$work/mnt-fuse-overlayfs
m_n=$work/mnt-rimgfs-nopassthrough m_t=$work/mnt-rimgfs-tiny
unmount_all() {
  local m
  for m in "$m_r" "$m_n" "$m_t"; do
    if is_mounted "$m"; then "$rimgfs" umount "$m" || "$rimgfs" umount --lazy "$m" || true; fi
  done
  if is_mounted "$m_k"; then umount "$m_k" || umount --lazy "$m_k" || true; fi
  if is_mounted "$m_f"; then fusermount3 -u "$m_f" || fusermount3 -uz "$m_f" || true; fi
}
trap unmount_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
unmount_all
rm -rf "$out" && mkdir -p "$out" "$m_r" "$m_k" "$m_f" "$m_n" "$m_t"
q() { printf '%q ' "$@"; }
drop='sync; echo 3 > /proc/sys/vm/drop_caches'
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
metric() { echo "$1 $2" >> "$out/metrics"; }
hf() {
  local name=$1; shift
  hyperfine --shell bash --style basic --export-json "$out/$name.json" "$@"
}

if [ ! -s "$image" ] || [ scripts/make-bench-image.py -nt "$image" ] ||
  [ scripts/imagetar.py -nt "$image" ]; then
  python3 scripts/make-bench-image.py "$image"
fi

echo "==> extracting the layers for overlayfs and fuse-overlayfs (from a cold cache)"
mapfile -t members < <(tar -xOf "$image" manifest.json |
  python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)[0]["Layers"]))')
rm -rf "$layers" && mkdir -p "$layers"
drop_caches
t0=$EPOCHREALTIME
lower=
for i in "${!members[@]}"; do
  dir=$layers/$i
  mkdir "$dir"
  tar -xOf "$image" "${members[$i]}" |
    tar -x -C "$dir" --numeric-owner --xattrs --xattrs-include='*'
  # OCI whiteouts in overlayfs's form: .wh.NAME becomes a 0/0 character device NAME, and
  # .wh..wh..opq the trusted.overlay.opaque attribute of its directory.
  while IFS= read -r -d '' wh; do
    rm "$wh"
    name=${wh##*/}
    if [ "$name" = .wh..wh..opq ]; then setfattr -n trusted.overlay.opaque -v y "${wh%/*}"
    else mknod "${wh%/*}/${name#.wh.}" c 0 0; fi
  done < <(find "$dir" -name '.wh.*' -print0)
  lower=$dir${lower:+:$lower}
done
sync
metric extract_seconds "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')"

echo "==> mount"
mount_r=$(q "$rimgfs" mount --cache-dir "$cache" "$image" "$m_r")
umount_r="$(q "$rimgfs" umount "$m_r") 2>/dev/null || true"
# Unmounted before each hyperfine call: its warmup runs may come without a --prepare.
unmount_all
hf mount-first-cold --runs "$runs" --prepare "$umount_r; rm -rf $(q "$cache"); $drop" "$mount_r"
unmount_all
hf mount-first-warm --runs "$runs" --prepare "$umount_r; rm -rf $(q "$cache")" "$mount_r"
unmount_all
hf mount-warm --runs "$runs" --warmup 1 --prepare "$umount_r" "$mount_r"
hf mount-overlayfs --runs "$runs" --prepare "umount $(q "$m_k") 2>/dev/null || true" \
  "$(q mount -t overlay overlay -o "ro,lowerdir=$lower" "$m_k")"
hf mount-fuse-overlayfs --runs "$runs" --prepare "fusermount3 -u $(q "$m_f") 2>/dev/null || true" \
  "$(q fuse-overlayfs -o "lowerdir=$lower" "$m_f")"
# The daemons serving the last mounts: the processes with exactly these command lines.
pid_of() {
  local want p
  want=$(printf '%s\n' "$@")
  for p in /proc/[0-9]*; do
    [ "$( { tr '\0' '\n' < "$p/cmdline"; } 2>/dev/null)" = "$want" ] && echo "${p#/proc/}" && return
  done
  echo "no process runs: $*" >&2
  return 1
}
pid_r=$(pid_of "$rimgfs" mount --cache-dir "$cache" "$image" "$m_r")
pid_f=$(pid_of fuse-overlayfs -o "lowerdir=$lower" "$m_f")
memory() {
  awk -v k="$1_$2" '$1 == "VmRSS:" || $1 == "VmHWM:" || $1 == "RssAnon:" {
    sub(":", "", $1); print k "_" $1, $2 }' "/proc/$3/status" >> "$out/metrics"
}
memory rimgfs mounted "$pid_r"
memory fuse-overlayfs mounted "$pid_f"

echo "==> the three mounts must show the same tree"
# Without link counts: overlayfs reports a lower inode's own count, which includes names that
# upper layers replaced or deleted; rimgfs counts the names the merged tree shows.
listing() { (cd "$1" && find . \( -type f -printf '%y %m %U:%G %s %p\n' \) -o \
  \( -type l -printf '%y %U:%G %p -> %l\n' \) -o -printf '%y %m %U:%G %p\n' | LC_ALL=C sort); }
listing "$m_k" > "$out/tree-overlayfs"
metric entries "$(wc -l < "$out/tree-overlayfs")"
for m in "$m_r" "$m_f"; do
  diff -u "$out/tree-overlayfs" <(listing "$m") > "$out/tree-diff" || {
    echo "error: $m differs from overlayfs:" >&2; head -20 "$out/tree-diff" >&2; exit 1; }
done

names=(-n rimgfs -n overlayfs -n fuse-overlayfs)
mounts=("$m_r" "$m_k" "$m_f")
each() { local m; for m in "${mounts[@]}"; do "$@" "$m"; done; }
walk() { echo "find $(q "$1") -printf $(q '%i %n %m %U %G %s %T@ %p\n') > /dev/null"; }
bigs=(data/model-a.bin data/model-b.bin data/model-c.bin data/model-d.bin)
read_big() { echo "cat $(q "${bigs[@]/#/$1/}") > /dev/null"; }
read_small() { echo "find $(q "$1") -type f -size -1024k -exec cat {} + > /dev/null"; }
sum() { awk '{ s += $1 } END { print s }'; }
metric big_bytes "$(cd "$m_k" && stat -c %s "${bigs[@]}" | sum)"
metric small_bytes "$(find "$m_k" -type f -size -1024k -printf '%s\n' | sum)"
metric small_files "$(find "$m_k" -type f -size -1024k | wc -l)"
# rimgfs copies each big file into its cache on first open, for kernel passthrough: the
# first read is timed once on its own (cold), before the runs that use the copies.
hf read_big-first --runs 1 --prepare "$drop" -n rimgfs "$(read_big "$m_r")"
for what in walk read_big read_small; do
  mapfile -t cmds < <(each "$what")
  echo "==> $what, cold"
  hf "$what-cold" --runs "$runs" --prepare "$drop" "${names[@]}" "${cmds[@]}"
  echo "==> $what, warm"
  hf "$what-warm" --runs 10 --warmup 2 "${names[@]}" "${cmds[@]}"
done
memory rimgfs used "$pid_r"
memory fuse-overlayfs used "$pid_f"

# The daemon's own cost per entry, without the binary and fixed buffers: its heap (RssAnon)
# serving this image minus serving a 42-entry one, each freshly mounted and walked once (the
# reads above add per-thread buffers, which do not grow with the image); and the merged
# tree's exact size, as `inspect` reports it.
python3 scripts/make-sample-image.py "$work/tiny.tar" > /dev/null
"$rimgfs" mount --cache-dir "$cache" "$work/tiny.tar" "$m_t"
find "$m_t" > /dev/null
memory rimgfs tiny "$(pid_of "$rimgfs" mount --cache-dir "$cache" "$work/tiny.tar" "$m_t")"
metric tiny_entries "$(find "$m_t" | wc -l)"
"$rimgfs" inspect --json --cache-dir "$cache" "$image" |
  python3 -c 'import json, sys; print("tree_bytes", json.load(sys.stdin)["tree"]["bytes"])' \
  >> "$out/metrics"

# -o nopassthrough: opens cost no round trip (the kernel skips them), big files are read
# through the daemon and the FUSE page cache.
"$rimgfs" mount -o nopassthrough --cache-dir "$cache" "$image" "$m_n"
find "$m_n" > /dev/null
memory rimgfs walked "$(pid_of "$rimgfs" mount -o nopassthrough --cache-dir "$cache" "$image" "$m_n")"
for what in read_big read_small; do
  hf "nopt-$what-cold" --runs "$runs" --prepare "$drop" -n rimgfs-nopassthrough "$("$what" "$m_n")"
  hf "nopt-$what-warm" --runs 10 --warmup 2 -n rimgfs-nopassthrough "$("$what" "$m_n")"
done

python3 scripts/bench-report.py "$out" "$rimgfs" | tee "$work/results.txt"
