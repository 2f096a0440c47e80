"""fuseproto's fuzzers, library side: inputs, structure-aware mutators, oracles, the
daemon harness, the campaign runner and its report. The atheris harnesses that use them
live in ``fuzz/`` at the top of the repository; see ``fuzz/README.md``."""
