# shellcheck shell=bash
# Helpers sourced by the scripts in this directory: package installation, the Rust toolchain,
# and the path of the built binary. Run from the repository root.

# Installs the Debian packages of "$@" that are not installed yet. A fresh machine's package
# lists are empty, so `apt-get update` comes first.
install_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "==> installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Installs packages whose service the tests start themselves (docker-registry, dockerd): a
# policy-rc.d exiting 101 keeps invoke-rc.d from starting them during the install. An existing
# policy-rc.d is the machine's own: it is left alone.
install_packages_without_services() {
  local p=/usr/sbin/policy-rc.d s=() rc=0
  [ "$(id -u)" -eq 0 ] || s=(sudo)
  [ -e "$p" ] && { install_packages "$@"; return; }
  printf '#!/bin/sh\nexit 101\n' | "${s[@]}" tee "$p" >/dev/null && "${s[@]}" chmod 755 "$p"
  install_packages "$@" || rc=$?
  "${s[@]}" rm -f "$p"
  return "$rc"
}

# Makes cargo available (rustup installs it under ~/.cargo/bin) or fails saying so.
require_cargo() {
  if ! command -v cargo >/dev/null && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck source=/dev/null
    . "$HOME/.cargo/env"
  fi
  command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup" >&2; exit 1; }
}

# The release binary that `cargo build --release` leaves.
rimgfs_bin() {
  echo "${CARGO_TARGET_DIR:-$PWD/target}/release/rimgfs"
}

# Whether PATH is a mount point now (read from the kernel's table, so a mount whose daemon died
# still counts; stat(2) on it would fail).
is_mounted() {
  awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo
}
