"""fuseproto's fuzzers, library side: inputs, structure-aware mutators, oracles, the
in-process targets and their table (:mod:`.registry`), the live-daemon harness
(:mod:`.harness`, :mod:`.sanitizer`, :mod:`.forensics`, :mod:`.replay`), the virtiofsd
loops (:mod:`.virtiofsd`, :mod:`.sequences`, :mod:`.shrink`), the campaign runner and
its report. The atheris harnesses that use them live in ``fuzz/`` at the top of the
repository; see ``fuzz/README.md``."""
