# The two quick-start commands (see README.md):
#   make run   - set up, then run a short fuzzing campaign against a real virtiofsd + report
#   make test  - set up, then run the whole test suite
.PHONY: setup run test bench lint

setup:
	scripts/setup.sh

run: setup
	scripts/run.sh

test: setup
	scripts/test.sh

bench: setup
	scripts/bench.sh

lint: setup
	.venv/bin/ruff check fuseproto tests fuzz benchmarks
	.venv/bin/ruff check --select SLF001 fuseproto
	.venv/bin/python -m mypy
