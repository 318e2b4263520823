#!/usr/bin/env bash
# Installs rimgfs for mount(8), the manual and the shells:
#
#   scripts/install.sh [BINARY]     # default: target/release/rimgfs (cargo build --release)
#
# - BINARY as $PREFIX/bin/rimgfs (PREFIX=/usr/local by default). mount(8) runs mount.fuse3
#   for `-t fuse.rimgfs` and fstab entries; mount.fuse3 runs `/bin/sh -c 'rimgfs SOURCE MNT
#   -o OPTS'` with the PATH mount(8) left it, none, so the shell's default PATH applies
#   (dash: /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin). No
#   mount.fuse.rimgfs helper is needed.
# - man/rimgfs.1 as $PREFIX/share/man/man1/rimgfs.1;
# - completions where each shell looks by default on Debian: bash-completion's
#   $PREFIX/share/bash-completion/completions/rimgfs, zsh's
#   $PREFIX/share/zsh/site-functions/_rimgfs, and fish's /etc/fish/completions/rimgfs.fish
#   (fish reads $PREFIX/share/fish/vendor_completions.d only when it is /usr or
#   XDG_DATA_DIRS names it).
#
# DESTDIR=DIR installs under DIR instead of /. Needs root (or sudo) to write system paths.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-${CARGO_TARGET_DIR:-$PWD/target}/release/rimgfs}
prefix=${PREFIX:-/usr/local} dest=${DESTDIR:-}
[ -x "$bin" ] || { echo "install.sh: $bin: not an executable; build it first" >&2; exit 1; }
if [ "$prefix" = /usr ]; then fish_dir=$prefix/share/fish/vendor_completions.d
else fish_dir=/etc/fish/completions; fi
sudo=()
[ -n "$dest" ] || [ "$(id -u)" -eq 0 ] || sudo=(sudo)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for shell in bash zsh fish; do "$bin" completions "$shell" > "$tmp/$shell"; done
put() { # MODE SOURCE TARGET
  echo "    $dest$3"
  "${sudo[@]}" install -D -m "$1" "$2" "$dest$3"
}
echo "==> installing rimgfs"
put 0755 "$bin" "$prefix/bin/rimgfs"
put 0644 man/rimgfs.1 "$prefix/share/man/man1/rimgfs.1"
put 0644 "$tmp/bash" "$prefix/share/bash-completion/completions/rimgfs"
put 0644 "$tmp/zsh" "$prefix/share/zsh/site-functions/_rimgfs"
put 0644 "$tmp/fish" "$fish_dir/rimgfs.fish"
