#!/usr/bin/env bash
# Run the whole test suite (after scripts/setup.sh). Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests - treating as failure" >&2
  exit 1
fi
exit "$rc"
