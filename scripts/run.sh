#!/usr/bin/env bash
# The main job (after scripts/setup.sh): a short fuzz campaign -- the wire decoders and the
# sans-IO session under atheris, then structure-aware FUSE requests into the real C and
# Rust virtiofsd daemons over vhost-user -- written up as out/fuzz-<time>/report.md and
# report.json (findings with reproducers and replay commands).
#
#   scripts/run.sh                      # ~2 minutes
#   FUSEPROTO_FUZZ_SECONDS=600 scripts/run.sh out/long-run
set -euo pipefail
cd "$(dirname "$0")/.."

budget=${FUSEPROTO_FUZZ_SECONDS:-100}
out=${1:-out/fuzz-$(date +%Y%m%d-%H%M%S)}

if [ ! -x .venv/bin/fuseproto ]; then
  echo "run: .venv is missing; run scripts/setup.sh first" >&2
  exit 1
fi
mkdir -p "$(dirname "$out")"
.venv/bin/fuseproto fuzz campaign --seconds "$budget" --out "$out"
ln -sfn "$(basename "$out")" "$(dirname "$out")/fuzz-latest" 2>/dev/null || true
echo
echo "run: report written to $out/report.md (machine-readable: $out/report.json)"
echo "run: reproducers under $out/findings/; replay one with: .venv/bin/fuseproto fuzz replay FILE"
