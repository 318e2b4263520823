#!/usr/bin/env bash
# Benchmarks rimgfs against kernel overlayfs (plain, and with metacopy=on,redirect_dir=on) and
# fuse-overlayfs, all three over the image's layers extracted to disk, in one run and on the
# same image. rimgfs is measured mounted writable (the default, with --upper) and read-only
# (--read-only), reported in separate tables; every figure is a median and a ratio to kernel
# overlayfs.
#
#   scripts/bench.sh                         # every section; needs root
#   QUICK=1 scripts/bench.sh                 # small sizes, one run each: checks the script
#   SECTIONS="read write" RUNS=5 scripts/bench.sh
#   SECTIONS=scale SCALE="100000:4 20000:500" scripts/bench.sh   # FILES:LAYERS images
#   RIMGFS_BIN=path scripts/bench.sh         # that binary (no cargo build)
#   RIMGFS_BIN="old=path1 new=path2" ...     # both binaries side by side, in the same run
#   UPPERS=/dev/shm scripts/bench.sh         # every upper in DIR/rimgfs-bench (on tmpfs: the
#                                            # write figures without the disk's own delays)
#
# Sections (SECTIONS, default "read write scale registry"):
#   read      image file → mounted (an uncompressed docker-archive and a gzip oci-archive of
#             the same image; the kernel's figure is extraction + mount), warm re-mount, the
#             first `head -c 4096` of the 1 GiB file cold and the cache it adds, `find` walk
#             and `ls -lR`, the big file read sequentially, 4 KiB random reads (fio, or a Python
#             reader without it), every small file read once, the small files read by 1, 2 and
#             4 parallel workers, daemon memory.
#   write     on a fresh upper each run, the filesystems taking turns run by run: copy-up of
#             the 1 GiB file (append a byte), chmod of it, `rm -rf` of a 1,000-file lower
#             tree, create and delete 10,000 files, sequential write + fsync, and the latency
#             of creates and stats while the big file is copied up.
#   scale     generated images of 100,000 and 1,000,000 files and of 500 layers: first and warm
#             mount, daemon RSS after mounting and after a walk (bytes per entry), the walk.
#   registry  a local docker-registry started here, filled with skopeo: mount docker://… and
#             read one file, bytes fetched (from the registry's access log), warm remount,
#             against `podman pull` + `podman image mount` and `skopeo copy docker://… oci:`;
#             plain gzip and, where skopeo can write it, zstd:chunked.
#
# Cold runs drop the page, dentry and inode caches first (rimgfs keeps its in-memory tree, as a
# mounted daemon does). RUNS (default 3, QUICK 1) runs per measurement, warm ones after one
# warmup run. Results: target/bench/results.txt (tables) and results.json; the raw hyperfine
# exports and probe outputs in target/bench/out. Every mount and server started here is stopped
# on exit, also on failure or ^C. Generated images stay in target/bench for the next run (the
# scale ones are deleted after their section unless KEEP_IMAGES=1). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh
[ "$(id -u)" -eq 0 ] || { echo "bench.sh needs root (overlayfs, drop_caches)" >&2; exit 1; }
install_packages fuse3 attr python3 ca-certificates hyperfine fuse-overlayfs fio
quick=${QUICK:-0}
if [ "$quick" = 1 ]; then runs=${RUNS:-1}; else runs=${RUNS:-3}; fi
sections=" ${SECTIONS:-read write scale registry} "
has() { [[ $sections == *" $1 "* ]]; }
has registry && install_packages_without_services docker-registry skopeo podman

# The binaries: label=path words, or one path (label rimgfs), or the release build.
declare -A bin
labels=()
if [ -n "${RIMGFS_BIN:-}" ]; then
  for word in $RIMGFS_BIN; do
    if [[ $word == *=* ]]; then label=${word%%=*} path=${word#*=}; else label=rimgfs path=$word; fi
    [ -x "$path" ] || { echo "RIMGFS_BIN: $path is not an executable" >&2; exit 1; }
    bin[$label]=$(realpath "$path")
    labels+=("$label")
  done
else
  require_cargo
  cargo build --release
  bin[rimgfs]=$(rimgfs_bin) labels=(rimgfs)
fi

started=$EPOCHREALTIME
work=$PWD/target/bench
out=$work/out mnt=$work/mnt up=${UPPERS:+$UPPERS/rimgfs-bench} caches=$work/cache
up=${up:-$work/up} layers=$work/layers
image=$work/image.tar gzimage=$work/image-gzip.tar
if [ "$quick" = 1 ]; then
  big_mib=64 seq_mib=64 nfiles=2000 nrand=2048 image=$work/image-quick.tar
  gzimage=$work/image-quick-gzip.tar
else
  big_mib=1024 seq_mib=512 nfiles=10000 nrand=16384
fi
registry_pid= registry_dir=$work/registry podman_root=$work/podman

# Stops what this script started: every mount under $work (deepest first), the registry.
cleanup() {
  local m
  while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done < <(awk -v w="$work/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  if [ -n "$registry_pid" ]; then
    kill "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true
    registry_pid=
  fi
  # Uppers elsewhere (UPPERS) hold gigabytes; on tmpfs, of memory.
  if [ -n "${UPPERS:-}" ]; then rm -rf "$up"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
cleanup
rm -rf "$out" "$mnt" "$up" "$caches" && mkdir -p "$out" "$mnt" "$up" "$caches"
q() { printf '%q ' "$@"; }
drop='sync; echo 3 > /proc/sys/vm/drop_caches'
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.6f\n", b - a }'; }
# metric FIGURE FS VALUE: one measurement (seconds, bytes or a count), one run.
metric() { echo "$1 $2 $3" >> "$out/metrics"; }
meta() { printf '%s\t%s\n' "$1" "$2" >> "$out/meta"; }
probe() { python3 scripts/bench-probe.py "$@"; }
hf() {
  local name=$1; shift
  hyperfine --shell bash --style basic --export-json "$out/$name.json" "$@"
}
meta started "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta load_start "$(uptime)"
meta runs "$runs"
meta quick "$quick"
meta sections "$sections"
for l in "${labels[@]}"; do meta "bin_$l" "${bin[$l]}: $("${bin[$l]}" --version)"; done
meta git "$(git describe --always --dirty 2>/dev/null || echo '?')"

# Writes image $2 with generator $1 (and arguments $3...) unless it is there and newer than
# the generators.
make_image() {
  local gen=$1 img=$2
  shift 2
  if [ ! -s "$img" ] || [ "$gen" -nt "$img" ] || [ scripts/imagetar.py -nt "$img" ]; then
    python3 "$gen" "$img" "$@"
  fi
}
echo "==> images"
make_image scripts/make-bench-image.py "$image" --big-mib "$big_mib"
if [ ! -s "$gzimage" ] || [ "$image" -nt "$gzimage" ]; then
  install_packages skopeo
  rm -f "$gzimage"
  skopeo copy -q --dest-compress --dest-compress-format gzip "docker-archive:$image" \
    "oci-archive:$gzimage:bench:latest"
fi
meta image "$(basename "$image"): $(du -m "$image" | cut -f1) MiB, $(probe layers "$image" |
  wc -l) uncompressed layers; gzip oci-archive $(du -m "$gzimage" | cut -f1) MiB"

# The filesystems. Kernel overlayfs and fuse-overlayfs run over the extracted layers with an
# upper and a work directory; rimgfs LABEL-rw with --upper, LABEL-ro with --read-only, each
# with a cache directory of its own. LABEL-rw-gz and LABEL-ro-gz mount the gzip oci-archive.
refs=(overlayfs overlayfs-meta fuse-overlayfs)
rw=() ro=()
for l in "${labels[@]}"; do rw+=("$l-rw") ro+=("$l-ro"); done
declare -A fsbin fsimage
for l in "${labels[@]}"; do
  for k in rw ro; do
    fsbin[$l-$k]=${bin[$l]} fsimage[$l-$k]=$image
    fsbin[$l-$k-gz]=${bin[$l]} fsimage[$l-$k-gz]=$gzimage
  done
done
lower=
# The command that mounts filesystem $1 on $mnt/$1.
mount_cmd() {
  local m=$mnt/$1 u=$up/$1 lopt="lowerdir=$lower,upperdir=$up/$1,workdir=$up/$1.work"
  case $1 in
    overlayfs) q mount -t overlay overlay -o "$lopt" "$m" ;;
    overlayfs-meta) q mount -t overlay overlay -o "$lopt,redirect_dir=on,metacopy=on" "$m" ;;
    fuse-overlayfs) q fuse-overlayfs -o "$lopt" "$m" ;;
    *-rw|*-rw-gz) q "${fsbin[$1]}" mount --cache-dir "$caches/$1" --upper "$u" --work "$u.work" \
      "${fsimage[$1]}" "$m" ;;
    *-ro|*-ro-gz) q "${fsbin[$1]}" mount --read-only --cache-dir "$caches/$1" \
      "${fsimage[$1]}" "$m" ;;
  esac
}
umount_cmd() { echo "umount $(q "$mnt/$1") 2>/dev/null || true"; }
# Unmount, wipe the upper and work directories, flush what earlier runs left dirty.
wipe_cmd() {
  echo "$(umount_cmd "$1"); rm -rf $(q "$up/$1" "$up/$1.work"); mkdir -p $(q "$up/$1" \
    "$up/$1.work" "$mnt/$1"); sync"
}
# hyperfine --prepare for a fresh mount of $1 on a fresh upper.
reset_cmd() { echo "$(wipe_cmd "$1"); $(mount_cmd "$1")"; }
fresh() { eval "$(reset_cmd "$1")"; }
unmount() { eval "$(umount_cmd "$1")"; }
# The daemon serving mount point $1: the rimgfs or fuse-overlayfs process with it as an
# argument.
daemon_pid() {
  local p exe args
  for p in /proc/[0-9]*; do
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    case ${exe##*/} in rimgfs* | fuse-overlayfs) ;; *) continue ;; esac
    # Read whole first: grep -q may exit before tr is done, which pipefail counts as a failure.
    args=$(tr '\0' '\n' 2>/dev/null < "$p/cmdline") || continue
    grep -qxF "$1" <<< "$args" && { echo "${p#/proc/}"; return; }
  done
  echo "no daemon serves $1" >&2
  return 1
}
# rss FIGURE FS: the daemon's VmRSS in bytes.
rss() {
  local pid
  pid=$(daemon_pid "$mnt/$2")
  metric "$1" "$2" "$(awk '$1 == "VmRSS:" { print $2 * 1024 }' "/proc/$pid/status")"
}
# bench NAME OPTIONS... -- CMD FS...: one hyperfine call timing CMD on each FS (its first %m:
# the mount point; a later one, such as find's mode, stays), with hyperfine OPTIONS and, if
# $prep names a function, its output for FS as FS's --prepare.
prep=
bench() {
  local name=$1 opts=() cmd fs m args=()
  shift
  while [ "$1" != -- ]; do opts+=("$1"); shift; done
  cmd=$2
  shift 2
  for fs in "$@"; do
    m=$(printf %q "$mnt/$fs")
    [ -n "$prep" ] && args+=(--prepare "$($prep "$fs")")
    args+=(-n "$fs" "${cmd/\%m/"$m"}")
  done
  hf "$name" "${opts[@]}" "${args[@]}"
}
# turn I FS...: the filesystems in round I's order, starting I places further on.
turn() {
  local i=$1 j
  shift
  local fss=("$@")
  for ((j = 0; j < ${#fss[@]}; j++)); do echo "${fss[(i + j) % ${#fss[@]}]}"; done
}
# rounds NAME CMD FS...: times CMD (run in a subshell; %m as for bench) on each FS in turn,
# RUNS rounds, each run after $prep's output for its FS. Filesystems alternate within a
# round, so a drift of the disk (writeback left by an earlier run, say) falls on all of them
# alike instead of on the ones measured last; and each round starts one filesystem further
# on, so no filesystem always runs in the same place of a round (with RUNS a multiple of the
# number of filesystems, each has every place equally often).
rounds() {
  local name=$1 cmd=$2 fs t0 i
  shift 2
  for ((i = 0; i < runs; i++)); do
    for fs in $(turn "$i" "$@"); do
      eval "$($prep "$fs")" > /dev/null
      t0=$(now)
      (eval "${cmd/\%m/$(printf %q "$mnt/$fs")}")
      metric "$name" "$fs" "$(since "$t0")"
    done
  done
}
listing() { (cd "$1" && find . \( -type f -printf '%y %m %U:%G %s %p\n' \) -o \
  \( -type l -printf '%y %U:%G %p -> %l\n' \) -o -printf '%y %m %U:%G %p\n' | LC_ALL=C sort); }
# Each mount in "$@" must show overlayfs's tree (without link counts: overlayfs reports a lower
# inode's own count, which includes names that upper layers replaced or deleted).
same_tree() {
  local fs
  listing "$mnt/overlayfs" > "$out/tree-overlayfs"
  for fs in "$@"; do
    listing "$mnt/$fs" | diff -u "$out/tree-overlayfs" - > "$out/tree-diff" || {
      echo "error: $fs differs from overlayfs:" >&2; head -20 "$out/tree-diff" >&2; exit 1; }
  done
}

if has read || has write; then
  echo "==> extracting the layers for overlayfs and fuse-overlayfs"
  # Timed for the kernel's "image file → mounted" (extraction + mount), from a cold cache.
  for img in "$gzimage" "$image"; do
    name=extract-$([ "$img" = "$image" ] && echo plain || echo gzip)
    hf "$name" --runs "$runs" --prepare "rm -rf $(q "$layers"); mkdir -p $(q "$layers"); $drop" \
      -n overlayfs "$(q python3 scripts/bench-probe.py extract "$img" "$layers") > /dev/null"
  done
  metric big_bytes - "$(stat -c %s "$layers/4/data/big.bin")"
fi
lower=$(probe layers "$image" | awk -v d="$layers" '{ l = d "/" NR - 1 (l ? ":" l : "") }
  END { print l }')
big=data/big.bin

if has read; then
  echo "==> read: image file → mounted (rimgfs: empty cache, cold page cache)"
  first_prep() { echo "$(wipe_cmd "$1"); rm -rf $(q "$caches/$1"); $drop"; }
  gz=()
  for fs in "${rw[@]}" "${ro[@]}"; do gz+=("$fs-gz"); done
  for fs in "${rw[@]}" "${ro[@]}" "${gz[@]}"; do
    hf "mount-first@$fs" --runs "$runs" --prepare "$(first_prep "$fs")" -n "$fs" \
      "$(mount_cmd "$fs")"
  done
  for fs in "${gz[@]}"; do unmount "$fs"; done
  echo "==> read: first open of the 1 GiB file, cold: head -c 4096, and the cache it adds"
  for ((i = 0; i < runs; i++)); do
    for fs in "${rw[@]}" "${ro[@]}"; do
      eval "$(first_prep "$fs")"
      eval "$(mount_cmd "$fs")"
      drop_caches
      c0=$(du -sb "$caches/$fs" | cut -f1) t0=$(now)
      head -c 4096 "$mnt/$fs/$big" > /dev/null
      metric head-cold "$fs" "$(since "$t0")"
      metric head-cache-growth "$fs" $(($(du -sb "$caches/$fs" | cut -f1) - c0))
    done
    for fs in "${refs[@]}"; do
      fresh "$fs"
      drop_caches
      t0=$(now)
      head -c 4096 "$mnt/$fs/$big" > /dev/null
      metric head-cold "$fs" "$(since "$t0")"
      unmount "$fs"
    done
  done
  echo "==> read: warm re-mount"
  for fs in "${refs[@]}"; do fresh "$fs"; done
  for fs in "${refs[@]}" "${rw[@]}" "${ro[@]}"; do
    hf "mount-warm@$fs" --runs "$runs" --warmup 1 --prepare "$(umount_cmd "$fs")" -n "$fs" \
      "$(mount_cmd "$fs")"
  done
  prep=
  for fs in "${refs[@]}" "${rw[@]}" "${ro[@]}" "${gz[@]}"; do fresh "$fs"; done
  all=("${refs[@]}" "${rw[@]}" "${ro[@]}")
  for fs in fuse-overlayfs "${rw[@]}" "${ro[@]}"; do rss rss-mounted "$fs"; done
  echo "==> read: every mount must show overlayfs's tree"
  same_tree fuse-overlayfs overlayfs-meta "${rw[@]}" "${ro[@]}" "${gz[@]}"
  metric entries - "$(wc -l < "$out/tree-overlayfs")"
  (cd "$mnt/overlayfs" && find . -type f -size -1024k -print0) > "$out/small-files"
  metric small_files - "$(tr -cd '\0' < "$out/small-files" | wc -c)"
  metric small_bytes - "$(cd "$mnt/overlayfs" && xargs -0 stat -c %s < "$out/small-files" |
    awk '{ s += $1 } END { print s }')"
  metric rand_bytes - $((nrand * 4096))

  walk="find %m -printf '%i %n %m %U %G %s %T@ %p\n' > /dev/null"
  # Cold runs take turns between the filesystems, as the write figures do (see rounds).
  cold_prep() { echo "$drop"; }
  cold_rounds() { local prep=cold_prep; rounds "$@"; }
  echo "==> read: find walk, cold and warm"
  cold_rounds walk-cold "$walk" "${all[@]}"
  bench walk-warm --runs "$runs" --warmup 1 -- "$walk" "${all[@]}"
  echo "==> read: ls -lR, warm"
  bench lslr-warm --runs "$runs" --warmup 1 -- "ls -lR %m > /dev/null" "${all[@]}" "${gz[@]}"
  echo "==> read: the 1 GiB file sequentially, cold and warm"
  cold_rounds seq-cold "cat %m/$big > /dev/null" "${all[@]}"
  bench seq-warm --runs "$runs" --warmup 1 -- "cat %m/$big > /dev/null" "${all[@]}"
  echo "==> read: $nrand random 4 KiB reads of the 1 GiB file, cold and warm"
  # The time spent in the reads, as the reader measures it (a process's start would
  # dominate the warm figure); the same seeded offsets every run, so the warmup caches them.
  if command -v fio > /dev/null; then
    meta randread "fio $(fio --version), psync, one job: count x mean latency"
  else
    meta randread "python3 os.pread loop (fio not installed)"
  fi
  # Kernel overlayfs mounts share the lower file's page cache: each warm run right after its
  # warmup, all before the cold ones.
  for fs in "${all[@]}"; do
    probe randread "$mnt/$fs/$big" "$nrand" > /dev/null
    for ((i = 0; i < runs; i++)); do
      metric rand-warm "$fs" "$(probe randread "$mnt/$fs/$big" "$nrand")"
    done
  done
  for ((i = 0; i < runs; i++)); do
    for fs in "${all[@]}"; do
      drop_caches
      metric rand-cold "$fs" "$(probe randread "$mnt/$fs/$big" "$nrand")"
    done
  done
  echo "==> read: every small file once, cold and warm"
  small="cd %m && xargs -0 cat -- < $(q "$out/small-files") > /dev/null"
  cold_rounds small-cold "$small" "${all[@]}"
  bench small-warm --runs "$runs" --warmup 1 -- "$small" "${all[@]}"
  for w in 1 2 4; do
    echo "==> read: the small files split between $w parallel reader(s), cold and warm"
    par="cd %m && xargs -0 -P $w -n 64 cat -- < $(q "$out/small-files") > /dev/null"
    cold_rounds "par$w-cold" "$par" "${all[@]}"
    bench "par$w-warm" --runs "$runs" --warmup 1 -- "$par" "${all[@]}"
  done
  for fs in fuse-overlayfs "${rw[@]}" "${ro[@]}"; do rss rss-read "$fs"; done
  cleanup
fi

if has write; then
  wall=("${refs[@]}" "${rw[@]}")
  # The lower file in the page cache, for every run alike.
  cat "$image" "$layers/4/$big" > /dev/null
  prep=reset_cmd
  echo "==> write: copy-up of the 1 GiB file (append 1 byte)"
  rounds w-copyup "printf x >> %m/$big" "${wall[@]}"
  echo "==> write: chmod of the 1 GiB file"
  rounds w-chmod "chmod 600 %m/$big" "${wall[@]}"
  echo "==> write: rm -rf of a 1,000-file lower tree"
  rounds w-rmrf "rm -rf %m/var/lib/bulk" "${wall[@]}"
  echo "==> write: create $nfiles files in a new directory, then delete them"
  rounds w-create "$(q python3 scripts/bench-probe.py files)%m/new $nfiles create" "${wall[@]}"
  create_prep() {
    echo "$(reset_cmd "$1") && $(q python3 scripts/bench-probe.py files "$mnt/$1/new" "$nfiles" \
      create)"
  }
  prep=create_prep
  rounds w-delete "$(q python3 scripts/bench-probe.py files)%m/new $nfiles delete" "${wall[@]}"
  prep=reset_cmd
  echo "==> write: $seq_mib MiB sequential write + fsync"
  rounds w-seq-fsync "dd if=/dev/zero of=%m/new.bin bs=1M count=$seq_mib conv=fsync status=none" \
    "${wall[@]}"
  metric wseq_bytes - $((seq_mib << 20))
  prep=
  echo "==> write: creates and stats elsewhere during the copy-up of the 1 GiB file"
  # Files of the image not looked up since the mount: the small files, in order.
  # (Without the read section: layers 2 and 3, which no layer above deletes from.)
  if [ -s "$out/small-files" ]; then tr '\0' '\n' < "$out/small-files"; else
    (cd "$layers/2" && find srv -type f) && (cd "$layers/3" && find var -type f); fi \
    > "$out/stat-names"
  for ((i = 0; i < runs; i++)); do
    for fs in $(turn "$i" "${wall[@]}"); do
      fresh "$fs"
      probe copyup-busy "$mnt/$fs" "$big" "$out/stat-names" > "$out/busy"
      while read -r k v; do metric "busy-$k" "$fs" "$v"; done < "$out/busy"
    done
  done
  cleanup
fi

if has scale; then
  if [ "$quick" = 1 ]; then scale=${SCALE:-20000:2 2000:50}; else
    scale=${SCALE:-100000:4 1000000:4 20000:500}; fi
  for spec in $scale; do
    files=${spec%:*} nl=${spec#*:}
    tag=${files}f${nl}l simg=$work/scale-$files-$nl.tar
    echo "==> scale: $files files in $nl layers"
    make_image scripts/make-scale-image.py "$simg" "$files" "$nl"
    t0=$(now)
    rm -rf "$layers-scale" && mkdir -p "$layers-scale"
    probe extract "$simg" "$layers-scale" > /dev/null
    metric "scale-$tag-extract" overlayfs "$(since "$t0")"
    for ((i = 0; i < runs; i++)); do
      for fs in overlayfs "${rw[@]}" "${ro[@]}"; do
        eval "$(wipe_cmd "$fs")"
        if [ "$fs" = overlayfs ]; then
          # Relative lower paths, run from their directory: 500 absolute ones do not fit
          # in the page that carries mount options.
          cmd="(cd $(q "$layers-scale") && $(q mount -t overlay overlay -o \
            "lowerdir=$(seq -s: $((nl - 1)) -1 0),upperdir=$up/$fs,workdir=$up/$fs.work" \
            "$mnt/$fs"))"
        else
          fsimage[$fs]=$simg
          rm -rf "${caches:?}/$fs"
          cmd=$(mount_cmd "$fs")
        fi
        t0=$(now); eval "$cmd"; metric "scale-$tag-first" "$fs" "$(since "$t0")"
        [ "$fs" = overlayfs ] || rss "scale-$tag-rss-mounted" "$fs"
        t0=$(now); find "$mnt/$fs" -printf '%i %s\n' > /dev/null
        metric "scale-$tag-walk" "$fs" "$(since "$t0")"
        [ "$fs" = overlayfs ] && { unmount "$fs"; continue; }
        rss "scale-$tag-rss-walked" "$fs"
        unmount "$fs"
        t0=$(now); eval "$cmd"; metric "scale-$tag-warm" "$fs" "$(since "$t0")"
        rss "scale-$tag-rss-warm" "$fs"
        unmount "$fs"
        fsimage[$fs]=$image
      done
    done
    metric "scale-$tag-entries" - "$((files + (files + 99) / 100 + 2))"
    rm -rf "$layers-scale" "$caches" && mkdir -p "$caches"
    [ "${KEEP_IMAGES:-0}" = 1 ] || rm -f "$simg"
  done
  cleanup
fi

if has registry; then
  echo "==> registry: docker-registry on 127.0.0.1, filled with skopeo"
  rimage=$work/registry-image.tar
  make_image scripts/make-bench-image.py "$rimage" --big-mib "$([ "$quick" = 1 ] && echo 16 ||
    echo 128)"
  rm -rf "$registry_dir" && mkdir -p "$registry_dir"
  port=$(probe free-port) addr=127.0.0.1:$port
  cat > "$registry_dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $registry_dir/storage
http:
  addr: $addr
  secret: rimgfs-bench
EOF
  docker-registry serve "$registry_dir/config.yml" > "$registry_dir/log" 2>&1 &
  registry_pid=$!
  for ((i = 0; i < 300; i++)); do
    curl -sf "http://$addr/v2/" > /dev/null && break
    kill -0 "$registry_pid" || { cat "$registry_dir/log" >&2; exit 1; }
    sleep 0.1
  done
  curl -sf "http://$addr/v2/" > /dev/null || { echo "docker-registry did not start" >&2; exit 1; }
  skopeo copy -q --dest-tls-verify=false "docker-archive:$rimage" "docker://$addr/bench:gzip"
  kinds=(gzip)
  # skopeo writes zstd:chunked where it knows it (the TOC's annotations show it did); through
  # an OCI layout, since a push straight from the archive reuses the gzip blobs just pushed.
  rm -rf "$registry_dir/zstd-chunked"
  if skopeo copy -q --format oci --dest-compress --dest-compress-format zstd:chunked \
    "docker-archive:$rimage" "oci:$registry_dir/zstd-chunked:bench" 2> "$out/zstd-chunked.err" &&
    skopeo copy -q --dest-tls-verify=false "oci:$registry_dir/zstd-chunked:bench" \
      "docker://$addr/bench:zstd-chunked" 2>> "$out/zstd-chunked.err" &&
    [[ $(skopeo inspect --raw --tls-verify=false "docker://$addr/bench:zstd-chunked") == \
      *zstd-chunked.manifest-checksum* ]]; then
    kinds+=(zstd-chunked)
  else
    meta zstd_chunked "not measured: skopeo did not write it ($(head -1 "$out/zstd-chunked.err"))"
  fi
  for kind in "${kinds[@]}"; do
    metric "reg-$kind-image-bytes" - "$(skopeo inspect --raw --tls-verify=false \
      "docker://$addr/bench:$kind" | python3 -c 'import json, sys
print(sum(layer["size"] for layer in json.load(sys.stdin)["layers"]))')"
  done
  pod=(podman --root "$podman_root/root" --runroot "$podman_root/run" --storage-driver overlay)
  # Unmounts what podman mounted under its root and removes the root.
  cleanup_podman() {
    local m
    "${pod[@]}" image unmount -a > /dev/null 2>&1 || true
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || true; done < <(
      awk -v w="$podman_root/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
    rm -rf "$podman_root"
  }
  cleanup_podman
  # Requests and blob bytes the registry served since log line $1 (its access log: combined
  # log format, the status then the body size).
  served() {
    tail -n +"$(($1 + 1))" "$registry_dir/log" | awk '/"(GET|HEAD) \/v2\// {
      n++; if ($0 ~ /\/blobs\//) { match($0, /" [0-9]+ [0-9]+ /); split(substr($0, RSTART + 2), f, " ");
      b += f[2] } } END { print n + 0, b + 0 }'
  }
  mark() { wc -l < "$registry_dir/log"; }
  one=srv/app0/file000.dat
  # registry FIGURE FS MARK T0: time since T0, requests and blob bytes since MARK.
  record() {
    local t r
    t=$(since "$4")
    read -r r b <<< "$(served "$3")"
    metric "$1" "$2" "$t"
    metric "$1-requests" "$2" "$r"
    metric "$1-bytes" "$2" "$b"
  }
  for kind in "${kinds[@]}"; do
    ref=docker://$addr/bench:$kind
    for ((i = 0; i < runs; i++)); do
      for l in "${labels[@]}"; do
        for k in rw ro; do
          fs=$l-$k
          mkdir -p "$mnt/$fs"
          opts=(--tls-verify=false --no-prefetch --cache-dir "$caches/reg-$fs")
          [ $k = ro ] && opts+=(--read-only) || opts+=(--upper "$up/reg-$fs")
          rm -rf "$caches/reg-$fs" "$up/reg-$fs" "$up/reg-$fs.work"
          mkdir -p "$up/reg-$fs"
          m0=$(mark) t0=$(now)
          "${bin[$l]}" mount "${opts[@]}" "$ref" "$mnt/$fs"
          cat "$mnt/$fs/$one" > /dev/null
          record "reg-$kind-first" "$fs" "$m0" "$t0"
          unmount "$fs"
          m0=$(mark) t0=$(now)
          "${bin[$l]}" mount "${opts[@]}" "$ref" "$mnt/$fs"
          cat "$mnt/$fs/$one" > /dev/null
          record "reg-$kind-warm" "$fs" "$m0" "$t0"
          unmount "$fs"
        done
      done
      [ "$kind" = gzip ] || continue
      rm -rf "$work/skopeo-oci"
      m0=$(mark) t0=$(now)
      skopeo copy -q --src-tls-verify=false "$ref" "oci:$work/skopeo-oci:bench"
      record "reg-$kind-first" skopeo "$m0" "$t0"
      rm -rf "$work/skopeo-oci"
      m0=$(mark) t0=$(now)
      "${pod[@]}" pull -q --tls-verify=false "$ref" > /dev/null
      pm=$("${pod[@]}" image mount "$addr/bench:$kind")
      cat "$pm/$one" > /dev/null
      record "reg-$kind-first" podman "$m0" "$t0"
      cleanup_podman
    done
  done
  rm -rf "$caches" && mkdir -p "$caches"
  cleanup
fi

meta load_end "$(uptime)"
meta bench_seconds "$(since "$started")"
python3 scripts/bench-report.py "$out" "$work/results.json" | tee "$work/results.txt"
