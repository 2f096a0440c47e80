"""The README's quick start and examples stay true."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


def test_quick_start_is_two_make_targets_that_exist():
    block = re.search(r"## Quick start.*?```sh\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
    targets = subprocess.run(["make", "-pn", "-C", str(ROOT), "test", "run"],
                             capture_output=True, text=True).stdout
    assert "\ntest: setup" in targets and "\nrun: setup" in targets
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_codec_example_runs():
    code = next(b for b in _python_blocks() if "decode_request" in b)
    ns: dict = {}
    exec(compile(code, "README:codec", "exec"), ns)
    assert ns["req"].body.count == 1 and ns["req"].body.entries[0].len == 2 << 20


def test_dax_example_runs():
    code = next(b for b in _python_blocks() if "OsvDaxManager" in b)
    ns: dict = {}
    exec(compile(code, "README:dax", "exec"), ns)
    r = ns["mgr"].read(1, 4096, 100)
    assert r.error == 0 and r.data == bytes(ns["files"].data(1)[4096:4196])
