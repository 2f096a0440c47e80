#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/.."
echo "main job not wired yet"
