#!/usr/bin/env bash
# Set up everything fuseproto needs on a fresh Debian 12 or 13 machine (as root):
# system packages (only those missing), a virtualenv in .venv with fuseproto and its dev
# and capture extras, the real virtiofsd daemons, the C virtiofsd variants built from
# Debian's source and the test guest's kernel and initramfs (all cached under
# ~/.cache/fuseproto).
# Idempotent: a second run does almost nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

debian_version=$(cat /etc/debian_version 2>/dev/null || echo unknown)
log "Debian ${debian_version}, $(uname -r)"

# 1. System packages (never touches the system's apt sources). A line "a | b" names one
# package by its Debian 13 and Debian 12 names: any of them installed is enough, and the
# first one the archive has is installed.
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# ensure_packages LINE...: install what is missing of the given lines (each "a" or "a | b").
ensure_packages() {
  local missing=() line alts a have pick pkgs=()
  for line in "$@"; do
    line=${line%%#*}; line=${line// /}
    [ -z "$line" ] && continue
    IFS='|' read -ra alts <<< "$line"
    have=
    for a in "${alts[@]}"; do if installed "$a"; then have=1; break; fi; done
    [ -z "$have" ] && missing+=("$line")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then echo "setup: need root to install ${missing[*]}" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  for line in "${missing[@]}"; do
    IFS='|' read -ra alts <<< "$line"
    pick=
    for a in "${alts[@]}"; do
      if apt-cache show "$a" >/dev/null 2>&1; then pick=$a; break; fi
    done
    [ -z "$pick" ] && { echo "setup: the archive has none of: ${alts[*]}" >&2; exit 1; }
    pkgs+=("$pick")
  done
  apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null
}
mapfile -t wanted < scripts/apt-packages.txt
ensure_packages "${wanted[@]}"

# 2. Python environment.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.fuseproto-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing fuseproto[dev,capture] into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[dev,capture]'
  touch "$stamp"
fi

# 3. Real daemons (C virtiofsd from QEMU 7.2, Rust virtiofsd 1.13), cached; then the C
# virtiofsd built from Debian's source (c-src, c-asan-cov; minutes the first time, then
# cached: a second run returns at once).
if .venv/bin/fuseproto daemons --help >/dev/null 2>&1; then
  .venv/bin/fuseproto daemons install
  .venv/bin/fuseproto daemons build
fi

# 3b. On request (FUSEPROTO_BUILD_RUST_COV=1, as CI sets it): the Rust virtiofsd with an
# edge map, rust-cov, built in a Debian 13 chroot made by debootstrap (~3 minutes on a
# quiet machine, 17-30 on a busy one, then cached). Without it
# tests/test_daemon_rust_cov.py is skipped.
if [ "${FUSEPROTO_BUILD_RUST_COV:-0}" = 1 ] && .venv/bin/fuseproto daemons --help >/dev/null 2>&1; then
  ensure_packages debootstrap
  .venv/bin/fuseproto daemons build rust-cov
fi

# 4. The test guest: Debian 12's cloud kernel, its virtio-fs modules and busybox, downloaded
# into the cache (never installed), and the initramfs built from them (cached: a second
# run returns at once).
if .venv/bin/fuseproto guest --help >/dev/null 2>&1; then
  .venv/bin/fuseproto guest setup
fi
log "ready"
