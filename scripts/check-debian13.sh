#!/usr/bin/env bash
# Run `make test` inside a Debian 13 (trixie) chroot, to check the Debian 13 paths from a
# Debian 12 machine: setup.sh's package names, the C virtiofsd from bookworm on trixie's
# libraries, the Rust virtiofsd running natively, the installed 7.41 fuse.h.
#
# The chroot is made with debootstrap from the archive this machine's apt sources name
# (kept under ~/.cache/fuseproto/trixie-root, reused next time); the repository is copied
# in (working tree, no .venv/out), the host's CA bundle and apt.conf.d settings too, and
# /root/.pyenv is bound read-only so the same Python runs as on the host (PYTHON=...).
# /proc, /sys, /dev and that bind are unmounted on exit, whatever happens. Needs root.
# Not part of `make test` (it downloads ~100 MB and takes ~5 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "check-debian13: needs root" >&2; exit 1; }
log() { printf '[debian13] %s\n' "$*" >&2; }

root=${TRIXIE_ROOT:-${FUSEPROTO_CACHE:-$HOME/.cache/fuseproto}/trixie-root}
py=${PYTHON:-$(python3 -c 'import sys; print(sys.executable)')}
if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null
fi
if [ ! -x "$root/usr/bin/python3" ]; then
  mirror=$(.venv/bin/python -c 'from fuseproto.daemons import system_archive_uri as u; print(u())')
  log "debootstrap trixie from $mirror into $root"
  mkdir -p "$root"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,make,git \
    trixie "$root" "$mirror" >/dev/null
fi

mounts=()
cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    umount -R "${mounts[$i]}" 2>/dev/null || umount -lR "${mounts[$i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT
mnt() { mount "$@"; mounts+=("${!#}"); }

cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
cp /etc/apt/apt.conf.d/* "$root/etc/apt/apt.conf.d/" 2>/dev/null || true
mnt -t proc proc "$root/proc"
mnt --rbind /sys "$root/sys"
mnt --rbind /dev "$root/dev"
case "$py" in
  /root/.pyenv/*)
    mkdir -p "$root/root/.pyenv"
    mnt --bind /root/.pyenv "$root/root/.pyenv"
    mount -o remount,bind,ro "$root/root/.pyenv" ;;
esac
rm -rf "$root/work/fuseproto"
mkdir -p "$root/work/fuseproto"
tar --exclude=./.venv --exclude=./out --exclude=./.git -cf - . | tar -xf - -C "$root/work/fuseproto"
log "Debian $(cat "$root/etc/debian_version"), Python $py: make test, then setup.sh again"
chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PYTHON="$py" \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
  /bin/bash -c 'cd /work/fuseproto && make test && bash scripts/setup.sh'
log "passed"
