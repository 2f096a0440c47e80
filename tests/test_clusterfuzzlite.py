"""The ClusterFuzzLite / OSS-Fuzz layout (.clusterfuzzlite/), validated as far as this
machine allows: no Docker daemon, so build.sh runs against the local stand-ins for the
image's helpers (.clusterfuzzlite/local/: compile_python_fuzzer, pip3), and what
PyInstaller can bundle is checked statically (.clusterfuzzlite/bundle_check.py); the
stand-in bundles hold only the modules that check found, and the fuzzers run from them."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CFL = ROOT / ".clusterfuzzlite"
IN_PROCESS = ("dax_fuzzer", "session_fuzzer", "wire_decode_fuzzer")


def _bundle_check():
    spec = importlib.util.spec_from_file_location("bundle_check", CFL / "bundle_check.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bundle_check", mod)  # its dataclasses look themselves up there
    spec.loader.exec_module(mod)
    return mod


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FUSEPROTO_PYINSTALLER", None)
    env.update(SRC=str(tmp_path / "src"), OUT=str(tmp_path / "out"),
               WORK=str(tmp_path / "work"),
               PATH=f"{CFL / 'local'}:{Path(sys.executable).parent}:{env.get('PATH', '')}")
    (tmp_path / "src").mkdir(exist_ok=True)
    link = tmp_path / "src" / "fuseproto"
    if not link.exists():
        link.symlink_to(ROOT)
    return env


def test_layout_names_the_python_builder_and_every_harness():
    docker = (CFL / "Dockerfile").read_text()
    assert re.search(r"^FROM gcr\.io/oss-fuzz-base/base-builder-python$", docker, re.M)
    assert "COPY .clusterfuzzlite/build.sh $SRC/" in docker
    assert re.search(r"^language: python$", (CFL / "project.yaml").read_text(), re.M)
    build = (CFL / "build.sh").read_text()
    assert "compile_python_fuzzer" in build and os.access(CFL / "build.sh", os.X_OK)
    live = re.search(r'^LIVE="([^"]*)"', build, re.M)
    assert live is not None
    harnesses = {p.stem for p in (ROOT / "fuzz").glob("*_fuzzer.py")}
    # Every harness is built, or named as one that needs a live daemon.
    assert set(live.group(1).split()) <= harnesses
    assert set(IN_PROCESS) <= harnesses - set(live.group(1).split())


def test_build_script_runs_outside_docker_and_its_fuzzers_run(tmp_path):
    env = _env(tmp_path)
    proc = subprocess.run(["bash", "-eu", str(CFL / "build.sh")], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pip3 (stand-in)" in proc.stdout
    out = tmp_path / "out"
    built = sorted(p.name for p in out.iterdir() if p.is_file() and os.access(p, os.X_OK))
    live = re.search(r'^LIVE="([^"]*)"', (CFL / "build.sh").read_text(), re.M)
    expected = sorted({p.stem for p in (ROOT / "fuzz").glob("*_fuzzer.py")}
                      - set(live.group(1).split()))
    assert built == expected and set(IN_PROCESS) <= set(built)
    for name in IN_PROCESS:
        assert (out / f"{name}.dict").read_text() == \
            (ROOT / "fuzz" / f"{name.removesuffix('_fuzzer')}.dict").read_text()
        seeds = tmp_path / "seeds" / name
        with zipfile.ZipFile(out / f"{name}_seed_corpus.zip") as z:
            names = z.namelist()
            assert names and all("/" not in n for n in names)  # flat, as OSS-Fuzz wants
            z.extractall(seeds)
        run = subprocess.run([str(out / name), "-runs=200", f"-dict={out / name}.dict",
                              str(seeds)], capture_output=True, text=True, timeout=300,
                             cwd=tmp_path)
        done = re.search(r"^Done (\d+) runs", run.stderr, re.M)
        # libFuzzer runs the seeds first, then at least -runs mutants' worth.
        assert run.returncode == 0 and done and int(done.group(1)) >= min(200, len(names)), \
            run.stderr[-2000:]
        assert "Instrumenting fuseproto.wire" in run.stderr or name == "dax_fuzzer"


def test_stand_in_bundle_holds_only_what_the_check_found(tmp_path):
    """The launcher runs with the site machinery off: a module missing from the bundle is
    an ImportError, not a silent fallback to the installed package."""
    env = _env(tmp_path)
    harness = "fuzz/wire_decode_fuzzer.py"
    proc = subprocess.run([str(CFL / "local" / "compile_python_fuzzer"), harness],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    bundle = tmp_path / "out" / "wire_decode_fuzzer.bundle"
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*.py")}
    assert "fuseproto/wire/codec.py" in files and "fuseproto/fuzz/targets.py" in files
    assert "fuseproto/daemons/__init__.py" not in files  # not in this harness's graph
    (bundle / "fuseproto" / "wire" / "codec.py").unlink()
    run = subprocess.run([str(tmp_path / "out" / "wire_decode_fuzzer"), "-runs=1"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "No module named 'fuseproto.wire.codec'" in run.stderr, run.stderr[-1500:]


def _toy_repo(root: Path) -> Path:
    """A toy fuseproto: a package whose submodule is reached only through its lazy
    exports (the shape of fuseproto.dax.__getattr__), and a harness that imports it."""
    dax = root / "fuseproto" / "dax"
    dax.mkdir(parents=True)
    (root / "fuseproto" / "__init__.py").write_text("")
    (dax / "__init__.py").write_text(
        "_EXPORTS = {'Thing': 'extra'}\n\n\ndef __getattr__(name):\n"
        "    import importlib\n\n"
        "    return getattr(importlib.import_module(f'{__name__}.{_EXPORTS[name]}'), name)\n")
    (dax / "extra.py").write_text("Thing = 42\n")
    harness = root / "toy_fuzzer.py"
    harness.write_text("import fuseproto.dax\nassert fuseproto.dax.Thing == 42\n")
    return harness


def test_a_lazy_export_must_be_named_to_pyinstaller(tmp_path):
    """A module reached only through a lazy export: the stand-in refuses to build until
    the PyInstaller arguments name it; then its bundle holds it and the harness runs."""
    env = _env(tmp_path)
    repo = tmp_path / "repo"
    harness = _toy_repo(repo)
    rep = _bundle_check().check(harness, repo)
    assert not rep.problems and rep.hidden == {"fuseproto.dax.extra"}
    assert rep.covered_by([]) == ["fuseproto.dax.extra"]
    assert rep.covered_by(["--collect-submodules=fuseproto.dax"]) == []
    assert rep.covered_by(["--hidden-import", "fuseproto.dax.extra"]) == []
    tool = str(CFL / "local" / "compile_python_fuzzer")
    refused = subprocess.run([tool, harness.name], capture_output=True, text=True, env=env,
                             cwd=repo, timeout=120)
    assert refused.returncode == 1
    assert "fuseproto.dax.extra is reached only through a lazy export" in refused.stderr
    built = subprocess.run([tool, harness.name, "--collect-submodules=fuseproto.dax"],
                           capture_output=True, text=True, env=env, cwd=repo, timeout=120)
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "out" / "toy_fuzzer.bundle" / "fuseproto" / "dax" / "extra.py").exists()
    run = subprocess.run([str(tmp_path / "out" / "toy_fuzzer")], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("name", IN_PROCESS)
def test_in_process_harnesses_import_only_what_pyinstaller_sees(name):
    rep = _bundle_check().check(ROOT / "fuzz" / f"{name}.py", ROOT)
    assert not rep.problems, rep.problems
    assert {"atheris", "construct"} <= rep.third_party
    assert "fuseproto.wire.codec" in rep.modules and "fuseproto.fuzz.targets" in rep.modules
    assert any("inject.py:apply (user-named)" in d for d in rep.dynamic)


def test_bundle_check_flags_computed_imports_and_data_files(tmp_path):
    """A toy package: an import by a computed name and a file found through __file__ are
    problems until explained; an import inside a function is followed like any other."""
    pkg = tmp_path / "fuseproto"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "plugins.py").write_text(
        "import importlib\n\ndef load(name):\n"
        "    return importlib.import_module(f'fuseproto.{name}')\n")
    (pkg / "tables.py").write_text(
        "from pathlib import Path\nDATA = Path(__file__).with_name('table.json')\n")
    (pkg / "late.py").write_text("def f():\n    from . import tables\n    return tables\n")
    harness = tmp_path / "toy_fuzzer.py"
    harness.write_text("import atheris\nfrom fuseproto import late, plugins\n")
    rep = _bundle_check().check(harness, tmp_path)
    assert {"fuseproto.plugins", "fuseproto.late", "fuseproto.tables"} <= rep.modules
    assert any(p.startswith("fuseproto/plugins.py:4: import by a computed name in load()")
               for p in rep.problems), rep.problems
    assert any(p.startswith("fuseproto/tables.py:2: locates files through __file__")
               for p in rep.problems), rep.problems
