#!/usr/bin/env bash
# Benchmarks rimgfs against kernel overlayfs and fuse-overlayfs serving the same image (the
# latter two over its layers extracted to disk).
#
# Reads, with rimgfs mounted --read-only: mount time, a metadata walk, sequential reads of big
# files, reads of every small file, and the daemon's memory per entry. Cold runs drop the page,
# dentry and inode caches first.
#
# Writes, on a second image holding a 1 GiB file, each run on a fresh upper directory (hyperfine
# --prepare unmounts, wipes the upper and work directories, syncs and mounts again): copy-up of
# the big file, creating files and stat'ing others while it runs, chmod of it (metadata-only
# copy-up where supported) and of a small file, sequential writes to a new file, creating and
# deleting 10,000 files. Kernel overlayfs runs with redirect_dir=on,metacopy=on.
#
# Needs root; not part of CI. Takes about 5 minutes.
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
started=$EPOCHREALTIME
work=$PWD/target/bench
image=$work/image.tar cache=$work/cache layers=$work/layers out=$work/out
m_r=$work/mnt-rimgfs m_k=$work/mnt-overlayfs m_f=$work/mnt-fuse-overlayfs
m_n=$work/mnt-rimgfs-nopassthrough m_t=$work/mnt-rimgfs-tiny
# The write benchmarks: their image, its extracted layer, and per filesystem a mount point and
# an upper directory (work directory: the same name plus .work). overlayfs-volatile is kernel
# overlayfs with -o volatile, which skips its fsync of copied-up files.
wimage=$work/write-image.tar wlayers=$work/write-layers wup=$work/upper
wfs=(rimgfs overlayfs overlayfs-volatile fuse-overlayfs)
declare -A wmnt
for fs in "${wfs[@]}"; do wmnt[$fs]=$work/wmnt-$fs; done
# Unmounts a mount of kind $1 (rimgfs, overlayfs or fuse-overlayfs) at $2 if there is one.
unmount_kind() {
  is_mounted "$2" || return 0
  case $1 in
    rimgfs) "$rimgfs" umount "$2" || "$rimgfs" umount --lazy "$2" || true ;;
    overlayfs*) umount "$2" || umount --lazy "$2" || true ;;
    fuse-overlayfs) fusermount3 -u "$2" || fusermount3 -uz "$2" || true ;;
  esac
}
unmount_writes() {
  local fs
  for fs in "${wfs[@]}"; do unmount_kind "$fs" "${wmnt[$fs]}"; done
}
unmount_all() {
  local m
  for m in "$m_r" "$m_n" "$m_t"; do unmount_kind rimgfs "$m"; done
  unmount_kind overlayfs "$m_k"
  unmount_kind fuse-overlayfs "$m_f"
  unmount_writes
}
trap unmount_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
unmount_all
rm -rf "$out" "$wup" && mkdir -p "$out" "$m_r" "$m_k" "$m_f" "$m_n" "$m_t" "${wmnt[@]}"
q() { printf '%q ' "$@"; }
drop='sync; echo 3 > /proc/sys/vm/drop_caches'
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
metric() { echo "$1 $2" >> "$out/metrics"; }
hf() {
  local name=$1; shift
  hyperfine --shell bash --style basic --export-json "$out/$name.json" "$@"
}

# Writes image $2 with generator $1 unless it is there and newer than the generators.
make_image() {
  if [ ! -s "$2" ] || [ "$1" -nt "$2" ] || [ scripts/imagetar.py -nt "$2" ]; then
    python3 "$1" "$2"
  fi
}
make_image scripts/make-bench-image.py "$image"
make_image scripts/make-write-bench-image.py "$wimage"

# Extracts the layers of image $1 into $2/0, $2/1, ... and sets `lower` to the lowerdir value
# (top layer first).
extract_layers() {
  local members i dir wh name
  mapfile -t members < <(tar -xOf "$1" manifest.json |
    python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)[0]["Layers"]))')
  rm -rf "$2" && mkdir -p "$2"
  lower=
  for i in "${!members[@]}"; do
    dir=$2/$i
    mkdir "$dir"
    tar -xOf "$1" "${members[$i]}" |
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
}

echo "==> extracting the layers for overlayfs and fuse-overlayfs (from a cold cache)"
drop_caches
t0=$EPOCHREALTIME
extract_layers "$image" "$layers"
metric extract_seconds "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')"

echo "==> mount"
mount_r=$(q "$rimgfs" mount --read-only --cache-dir "$cache" "$image" "$m_r")
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
pid_r=$(pid_of "$rimgfs" mount --read-only --cache-dir "$cache" "$image" "$m_r")
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
"$rimgfs" mount --read-only --cache-dir "$cache" "$work/tiny.tar" "$m_t"
find "$m_t" > /dev/null
memory rimgfs tiny \
  "$(pid_of "$rimgfs" mount --read-only --cache-dir "$cache" "$work/tiny.tar" "$m_t")"
metric tiny_entries "$(find "$m_t" | wc -l)"
"$rimgfs" inspect --json --cache-dir "$cache" "$image" |
  python3 -c 'import json, sys; print("tree_bytes", json.load(sys.stdin)["tree"]["bytes"])' \
  >> "$out/metrics"

# -o nopassthrough: opens cost no round trip (the kernel skips them), big files are read
# through the daemon and the FUSE page cache.
"$rimgfs" mount --read-only -o nopassthrough --cache-dir "$cache" "$image" "$m_n"
find "$m_n" > /dev/null
memory rimgfs walked \
  "$(pid_of "$rimgfs" mount --read-only -o nopassthrough --cache-dir "$cache" "$image" "$m_n")"
for what in read_big read_small; do
  hf "nopt-$what-cold" --runs "$runs" --prepare "$drop" -n rimgfs-nopassthrough "$("$what" "$m_n")"
  hf "nopt-$what-warm" --runs 10 --warmup 2 -n rimgfs-nopassthrough "$("$what" "$m_n")"
done

unmount_all

# Writes. The command that mounts filesystem $1 writable on upper directory $wup/$1.
wmount() {
  local up=$wup/$1 mnt=${wmnt[$1]}
  case $1 in
    rimgfs) q "$rimgfs" mount --cache-dir "$cache" --upper "$up" --work "$up.work" \
      "$wimage" "$mnt" ;;
    overlayfs) q mount -t overlay overlay \
      -o "lowerdir=$wlower,upperdir=$up,workdir=$up.work,redirect_dir=on,metacopy=on" "$mnt" ;;
    overlayfs-volatile) q mount -t overlay overlay \
      -o "lowerdir=$wlower,upperdir=$up,workdir=$up.work,redirect_dir=on,metacopy=on,volatile" \
      "$mnt" ;;
    fuse-overlayfs) q fuse-overlayfs -o "lowerdir=$wlower,upperdir=$up,workdir=$up.work" "$mnt" ;;
  esac
}
# hyperfine --prepare for filesystem $1: unmount, wipe the upper and work directories, flush
# what earlier runs left dirty, mount again.
wreset() {
  local up=$wup/$1 mnt=${wmnt[$1]} umnt
  case $1 in
    rimgfs) umnt=$(q "$rimgfs" umount "$mnt") ;;
    overlayfs*) umnt=$(q umount "$mnt") ;;
    fuse-overlayfs) umnt=$(q fusermount3 -u "$mnt") ;;
  esac
  echo "$umnt 2>/dev/null || true; rm -rf $(q "$up" "$up.work"); mkdir -p $(q "$up" "$up.work");" \
    "sync; $(wmount "$1")"
}
# wbench NAME COMMAND FS...: runs COMMAND, in which %m stands for the mount point, on each FS
# with the hyperfine options in the array wopts.
wbench() {
  local name=$1 cmd=$2 fs m args=()
  shift 2
  for fs in "$@"; do
    m=$(printf %q "${wmnt[$fs]}")
    args+=(--prepare "$(wreset "$fs")" -n "$fs" "${cmd//%m/"$m"}")
  done
  unmount_writes
  hf "$name" "${wopts[@]}" "${args[@]}"
  unmount_writes
  rm -rf "$wup"
}

echo "==> extracting the write image's layer"
extract_layers "$wimage" "$wlayers"
wlower=$lower
echo "==> a first writable mount of each filesystem (rimgfs's fills its cache)"
for fs in "${wfs[@]}"; do eval "$(wreset "$fs")"; done
big=data/big.bin small=etc/small.conf
metric wbig_bytes "$(stat -c %s "${wmnt[overlayfs]}/$big")"
for fs in rimgfs fuse-overlayfs; do
  diff <(cd "${wmnt[overlayfs]}" && find . -printf '%y %m %s %p\n' | LC_ALL=C sort) \
    <(cd "${wmnt[$fs]}" && find . -printf '%y %m %s %p\n' | LC_ALL=C sort) ||
    { echo "error: the write image differs on $fs" >&2; exit 1; }
done
unmount_writes
# The lower files in the page cache, for every run alike.
cat "$wimage" "$wlayers/0/$big" > /dev/null
# A run of the create and delete benchmark in a lower directory ends after this many seconds
# (timeout(1)); hyperfine then records a failed run of that length.
seq_mib=512 files=10000 limit=${WRITE_LIMIT:-30}
metric wseq_bytes $((seq_mib << 20))
metric wfiles "$files"
metric wlimit "$limit"
cat > "$out/create-delete.py" <<'EOF'
# Creates N empty files in DIR, then deletes them: one process, one open/close and one unlink
# per file. A DIR that does not exist is made first and removed at the end.
import os
import sys

d, n = sys.argv[1], int(sys.argv[2])
made = not os.path.isdir(d)
if made:
    os.mkdir(d)
names = [os.path.join(d, f"bench{i:05d}") for i in range(n)]
for name in names:
    os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
for name in names:
    os.unlink(name)
if made:
    os.rmdir(d)
EOF
fs3=(rimgfs overlayfs fuse-overlayfs)
echo "==> copy-up: append 1 byte to a 1 GiB lower file"
wopts=(--runs "$runs")
wbench w-copyup "printf x >> %m/$big" "${wfs[@]}"
cat > "$out/busy.py" <<'EOF'
# While `printf x >> MNT/BIG` copies BIG up, times creating files and stat'ing lower files
# not looked up before on the same mount (the names of NAMES_DIR, a host directory, in
# LOWER_DIR of the mount); prints metrics "busy_create_ms_FS", "busy_stat_ms_FS" (the slowest
# of each) and "busy_during_FS" (1 if every sample was taken before the copy-up ended). The
# copy-up is under way once WORK holds a non-empty file; all samples go to stderr.
import os
import subprocess
import sys
import time

fs, mnt, work, big, names_dir, lower_dir = sys.argv[1:7]
names = sorted(os.listdir(names_dir))
copy = subprocess.Popen(["sh", "-c", f'printf x >> "{mnt}/{big}"'])


def busy():
    for root, _, files in os.walk(work):
        for f in files:
            try:
                if os.lstat(os.path.join(root, f)).st_size > 0:
                    return True
            except OSError:
                pass
    return False


# Kernel overlayfs copies into an O_TMPFILE, which never shows: give it 50 ms to start.
start = time.perf_counter()
while copy.poll() is None and not busy() and time.perf_counter() - start < 0.05:
    time.sleep(0.001)
creates, stats = [], []
for i, name in enumerate(names):
    t = time.perf_counter()
    os.close(os.open(f"{mnt}/busy-{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    creates.append(time.perf_counter() - t)
    t = time.perf_counter()
    os.stat(os.path.join(mnt, lower_dir, name))
    stats.append(time.perf_counter() - t)
during = copy.poll() is None
copy.wait()
print(fs, "create ms", [round(c * 1e3, 2) for c in creates], file=sys.stderr)
print(fs, "stat ms", [round(c * 1e3, 2) for c in stats], file=sys.stderr)
print(f"busy_create_ms_{fs} {max(creates) * 1e3:.3f}")
print(f"busy_stat_ms_{fs} {max(stats) * 1e3:.3f}")
print(f"busy_during_{fs} {int(during)}")
EOF
echo "==> during that copy-up: create files and stat lower files elsewhere"
for fs in "${fs3[@]}"; do
  unmount_writes
  eval "$(wreset "$fs")"
  python3 "$out/busy.py" "$fs" "${wmnt[$fs]}" "$wup/$fs.work" "$big" \
    "$wlower/var/spool/queue" var/spool/queue >> "$out/metrics"
done
unmount_writes
rm -rf "$wup"
echo "==> chmod of the 1 GiB lower file, and of a 4 KiB one"
wopts=(--runs 10)
wbench w-chmod-big "chmod 600 %m/$big" "${fs3[@]}"
wbench w-chmod-small "chmod 600 %m/$small" "${fs3[@]}"
echo "==> sequential write of $seq_mib MiB to a new file, without and with fsync"
wopts=(--runs "$runs")
wbench w-seq "dd if=/dev/zero of=%m/new.bin bs=1M count=$seq_mib status=none" "${fs3[@]}"
wbench w-seq-fsync "dd if=/dev/zero of=%m/new.bin bs=1M count=$seq_mib conv=fsync status=none" \
  "${fs3[@]}"
echo "==> create $files files in a new directory, then delete them"
wbench w-create-delete "python3 $(q "$out/create-delete.py") %m/bench-files $files" "${fs3[@]}"
echo "==> create $files files in a lower directory, then delete them (${limit} s at most)"
wopts=(--runs 3 --ignore-failure)
wbench w-create-delete-lower \
  "timeout $limit python3 $(q "$out/create-delete.py") %m/var/spool/queue $files" "${fs3[@]}"

metric bench_seconds "$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')"
python3 scripts/bench-report.py "$out" "$rimgfs" | tee "$work/results.txt"
