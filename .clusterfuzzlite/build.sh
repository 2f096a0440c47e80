#!/bin/bash -eu
# ClusterFuzzLite / OSS-Fuzz build: every in-process atheris harness in fuzz/ becomes a
# PyInstaller bundle in $OUT (compile_python_fuzzer), with its dictionary and its seed
# corpus as <fuzzer>.dict and <fuzzer>_seed_corpus.zip. Harnesses that drive a live
# virtiofsd need the daemon on the fuzzing machine and are left out (LIVE below).
# Outside Docker, .clusterfuzzlite/local/ stands in for the image's helpers
# (tests/test_clusterfuzzlite.py runs this script with it).
cd "$SRC/fuseproto"
pip3 install .

# Harnesses that need a real daemon (FUSEPROTO_FUZZ_DAEMON): not for ClusterFuzzLite.
LIVE="virtiofsd_fuzzer"
# Modules a harness reaches only through a lazy export (fuseproto.dax.__getattr__):
# PyInstaller must be told (.clusterfuzzlite/bundle_check.py lists what each needs).
declare -A EXTRA=([dax_fuzzer]="--collect-submodules=fuseproto.dax")

for harness in fuzz/*_fuzzer.py; do
  fuzzer=$(basename "$harness" .py)
  case " $LIVE " in *" $fuzzer "*) continue ;; esac
  # shellcheck disable=SC2086  # the extra PyInstaller arguments are words
  compile_python_fuzzer "$harness" ${EXTRA[$fuzzer]:-}
  target=${fuzzer%_fuzzer}
  if [ -f "fuzz/$target.dict" ]; then
    cp "fuzz/$target.dict" "$OUT/$fuzzer.dict"
  fi
  if [ -d "corpus/$target" ]; then
    (cd "corpus/$target" && python3 -m zipfile -c "$OUT/${fuzzer}_seed_corpus.zip" .)
  fi
done
