#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test (unit, logic and
# real-mount tests; the latter compare mounts with skopeo/umoci/podman's view of the images).
# Under CI=true the mount tests fail instead of skipping when FUSE is unavailable.
#
# Tests use the dev profile: on 2 cores a clean `cargo test --no-run` takes about 36 s against
# 82 s with --release, while the test images are small (kilobytes to a few megabytes) and sha2,
# the hot loop of indexing, is optimised in the dev profile too (see Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh

# The oracle tests build images with podman around the static busybox, convert them with
# skopeo, unpack them with umoci and compare trees; the permission tests add a user; the
# completion tests load the scripts in each shell (a few MB). The registry tests run
# docker-registry with htpasswd (apache2-utils) or a token server (python3-jwt,
# python3-cryptography) and TLS material made with openssl.
install_packages fuse3 attr python3 gcc libc6-dev ca-certificates \
  podman skopeo umoci fuse-overlayfs uidmap busybox-static zstd passwd util-linux \
  apache2-utils python3-jwt python3-cryptography openssl bash-completion zsh fish
# The registry and docker-daemon tests start their own docker-registry and dockerd; the
# packages' services must not start.
install_packages_without_services docker-registry docker.io
require_cargo
[ -e /dev/fuse ] || echo "warning: /dev/fuse is missing; mount tests cannot run" >&2
# udev makes /dev/fuse 0666 on Debian, so users other than root can mount through fusermount3;
# a machine without udev leaves it 0600, and the unprivileged-mount test needs it as Debian has it.
if [ -c /dev/fuse ] && [ "$(stat -c %a /dev/fuse)" != 666 ] && [ "$(id -u)" -eq 0 ]; then
  echo "==> chmod 0666 /dev/fuse, as udev sets it"
  chmod 0666 /dev/fuse
fi
echo "==> CI=${CI:-} $(cargo --version)"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

echo "==> cargo test --no-fail-fast"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --no-fail-fast 2>&1 | tee "$log" || status=$?

# One line per test binary, then the totals, so the outcome is readable at the end of a
# long log.
echo "==> summary"
grep '^test result:' "$log" || echo "no test ran"
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$status"
