#!/usr/bin/env bash
# Run every benchmark (after scripts/setup.sh). Each prints its figures next to a baseline
# measured in the same run, and the ratio against its target.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
echo "== wire decode/encode vs struct baseline"; $py benchmarks/bench_decode.py
echo "== vhost-user transport and client vs real virtiofsd"; $py benchmarks/bench_transport.py --seconds 1.5 --repeat 3
echo "== DAX lookup cost and simulator throughput"; $py benchmarks/bench_dax.py
echo "== capture decoding: decode_capture and the decode CLI vs the raw codec"; $py benchmarks/bench_decode_cli.py
echo "== DAX through the real c-dax daemon vs the model device"; $py benchmarks/bench_dax_cdax.py
echo "== the recording proxy (fuseproto capture proxy) vs a direct connection"; $py benchmarks/bench_proxy.py --seconds 1
echo "== fuseproto mount vs the host, same disk"; $py benchmarks/bench_mount.py
echo "== time to catch each bug variant (tests/fuzz_mutants.py) vs the clean targets"; $py benchmarks/bench_time_to_catch.py
# Long (2 x 300 s by default): FUSEPROTO_BENCH_COVERAGE_SECONDS to shorten, 0 to skip.
cov_s=${FUSEPROTO_BENCH_COVERAGE_SECONDS:-300}
if [ "$cov_s" != 0 ]; then
  echo "== daemon edges with coverage feedback vs outcome classes (c-asan-cov)"; $py benchmarks/bench_coverage.py --seconds "$cov_s"
fi
