#!/usr/bin/env python3
"""Can PyInstaller bundle this harness? A static check of what it imports.

OSS-Fuzz and ClusterFuzzLite build a Python harness with ``compile_python_fuzzer``, which
runs PyInstaller: the bundle holds the modules PyInstaller's import graph finds, i.e. the
``import`` statements it can read (at module level and inside functions alike). A module
loaded by a name computed at run time, or a file read next to a module's ``__file__``,
is not in it unless the build says so. This script walks the same graph from a harness
(every ``import`` of every reachable fuseproto module, any nesting), then:

* every third-party module it reaches must be importable here (PyInstaller bundles what
  is installed);
* every dynamic import in the reachable fuseproto modules (``importlib.import_module``,
  ``__import__``, ``importlib.util.find_spec``) must be one this file explains in
  ``DYNAMIC``: either its targets are checked to be in the graph (the lazy exports of
  ``fuseproto.dax``, the ``requires`` of the harness's target), or it only ever loads
  what a user names at run time (the test-only fault hook, a DAX manager plug-in), which a
  bundle cannot hold by design;
* no reachable module may locate data through ``__file__`` (the bundle has no such
  files), unless ``DATA_FILES`` says why that code path is not the harness's.

Usage: ``bundle_check.py HARNESS.py [...]`` from the repository root (or with the
repository on ``sys.path``); prints the graph's size and any problem, exits 1 on one.
The local ``compile_python_fuzzer`` stand-in (``.clusterfuzzlite/local/``) runs it on
every harness the build script compiles; ``tests/test_clusterfuzzlite.py`` does too.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "fuseproto"

#: Dynamic imports that are understood: "path:function" -> how they are checked.
#: ``lazy-exports``: the module's ``_EXPORTS`` table names submodules loaded on first
#: attribute access; each must be in the graph when the package is.
#: ``target-requires``: the fuzz target's ``requires`` modules (checked by find_spec before
#: the target runs) must be in the graph.
#: ``user-named``: loads a module the user names at run time (an environment variable or a
#: command-line value); nothing in the package is reached through it.
DYNAMIC = {
    "fuseproto/dax/__init__.py:__getattr__": "lazy-exports",
    "fuseproto/fuzz/targets.py:available": "target-requires",
    "fuseproto/fuzz/inject.py:apply": "user-named",  # FUSEPROTO_FUZZ_INJECT (tests only)
    "fuseproto/dax/registry.py:load_manager": "user-named",  # --dax-manager module:factory
    "fuseproto/cli.py:build_parser": "user-named",  # the CLI's subcommand modules
}

#: Modules that use ``__file__``, and why a bundled harness does not depend on it.
DATA_FILES = {
    "fuseproto/daemons/variants.py": "the C sources of the daemon builds, read only by "
                                     "`fuseproto daemons build` (reached from the DAX "
                                     "target through fuseproto.dax's lazy exports)",
    "fuseproto/daemons/rust_build.py": "the coverage runtime's C source for the Rust "
                                       "daemon build, read only by `fuseproto daemons "
                                       "build rust-cov`",
    "fuseproto/fuzz/findings.py": "the package's own directory, to name the frame an "
                                  "exception escaped from; no file is read",
}

_DYNAMIC_CALLS = {("importlib", "import_module"), ("importlib.util", "find_spec"),
                  (None, "__import__"), (None, "import_module"), (None, "find_spec")}


@dataclass
class Report:
    harness: str
    modules: set[str] = field(default_factory=set)  # fuseproto modules reached
    third_party: set[str] = field(default_factory=set)  # top-level names
    problems: list[str] = field(default_factory=list)
    dynamic: list[str] = field(default_factory=list)  # the explained sites reached
    # Modules reached only through a lazy export: the build must name them to PyInstaller
    # (--hidden-import, or --collect-submodules of their package).
    hidden: set[str] = field(default_factory=set)

    def covered_by(self, pyinstaller_args: list[str]) -> list[str]:
        """The hidden modules that ``pyinstaller_args`` leave out."""
        named: list[str] = []
        for i, a in enumerate(pyinstaller_args):
            for opt in ("--hidden-import", "--collect-submodules"):
                if a == opt and i + 1 < len(pyinstaller_args):
                    named.append(pyinstaller_args[i + 1])
                elif a.startswith(opt + "="):
                    named.append(a.split("=", 1)[1])
        return sorted(m for m in self.hidden
                      if not any(m == n or m.startswith(n + ".") for n in named))


def module_file(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports(tree: ast.AST, mod: str, is_pkg: bool) -> Iterator[tuple[str, int]]:
    """(absolute module name, line) of every import in ``tree``, at any depth; for
    ``from X import a`` both ``X`` and ``X.a`` (``a`` may be a submodule)."""
    base = mod if is_pkg else mod.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                target = ".".join(parts + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, node.lineno
            for a in node.names:
                yield f"{target}.{a.name}", node.lineno


def _dynamic_sites(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """(enclosing function, line) of every call that imports by a computed name."""
    def walk(node: ast.AST, func: str) -> Iterator[tuple[str, int]]:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) \
                else func
            if isinstance(child, ast.Call):
                f = child.func
                owner = None
                if isinstance(f, ast.Attribute):
                    owner = ast.unparse(f.value)
                    attr = f.attr
                elif isinstance(f, ast.Name):
                    attr = f.id
                else:
                    attr = ""
                if (owner, attr) in _DYNAMIC_CALLS:
                    yield func, child.lineno
            yield from walk(child, name)

    yield from walk(tree, "<module>")


def _uses_file(tree: ast.AST) -> int | None:
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "__file__":
            return node.lineno
    return None


def _lazy_exports(tree: ast.AST, pkg: str) -> list[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            table = ast.literal_eval(node.value)
            return sorted({f"{pkg}.{m}" for m in table.values()})
    return []


def _target_requires(harness: Path) -> list[str]:
    """The ``requires`` of the fuzz target a harness runs (by its file name)."""
    from fuseproto.fuzz.registry import TARGETS

    name = harness.name.removesuffix(".py").removesuffix("_fuzzer")
    t = TARGETS.get(name)
    return list(t.requires) if t is not None else []


def check(harness: str | Path, root: str | Path = ".") -> Report:
    """Walk ``harness``'s import graph under ``root`` (the repository) and check it."""
    root, harness = Path(root).resolve(), Path(harness).resolve()
    rep = Report(str(harness))
    explained: dict[str, str] = {}
    lazy: set[str] = set()
    seen: set[str] = set()
    # First what PyInstaller sees (static imports), then what lazy exports add.
    _walk(root, [("__main__", harness)], seen, rep, explained, lazy)
    rep.hidden = {m for m in lazy if m not in seen and module_file(root, m) is not None}
    rep.modules |= rep.hidden
    _walk(root, [(m, p) for m in sorted(rep.hidden) if (p := module_file(root, m))],
          seen, rep, explained, lazy)
    for key, how in sorted(explained.items()):
        rep.dynamic.append(f"{key} ({how})")
        if how == "target-requires":
            for m in _target_requires(harness):
                if m.split(".")[0] == PACKAGE and m not in rep.modules:
                    rep.problems.append(f"{key}: the target requires {m}, which the harness "
                                        "never imports (PyInstaller would leave it out)")
                elif m.split(".")[0] != PACKAGE:
                    rep.third_party.add(m.split(".")[0])
    for top in sorted(rep.third_party):
        if importlib.util.find_spec(top) is None:
            rep.problems.append(f"third-party module {top} is not installed: PyInstaller "
                                "cannot bundle it")
    return rep


def _walk(root: Path, roots: list[tuple[str, Path]], seen: set[str], rep: Report,
          explained: dict[str, str], lazy: set[str]) -> None:
    """Follow every import from ``roots`` (fuseproto modules into ``rep.modules``, other
    top-level names into ``rep.third_party``), judging each module on the way."""
    todo = list(roots)
    while todo:
        mod, path = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        tree = ast.parse(path.read_text(), str(path))
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        for name, _line in _imports(tree, mod, path.name == "__init__.py"):
            top = name.split(".")[0]
            if top == PACKAGE:
                # Importing a.b.c runs a/__init__ and a/b/__init__ too.
                parts = name.split(".")
                for k in range(1, len(parts) + 1):
                    f = module_file(root, ".".join(parts[:k]))
                    if f is not None:
                        rep.modules.add(".".join(parts[:k]))
                        todo.append((".".join(parts[:k]), f))
            elif name == top and top not in sys.stdlib_module_names \
                    and top not in sys.builtin_module_names and top != "__future__":
                rep.third_party.add(top)
        if mod == "__main__":
            continue
        for func, line in _dynamic_sites(tree):
            key = f"{rel}:{func}"
            how = DYNAMIC.get(key)
            if how is None:
                rep.problems.append(f"{rel}:{line}: import by a computed name in {func}() "
                                    "that bundle_check.DYNAMIC does not explain")
                continue
            explained[key] = how
            if how == "lazy-exports":
                lazy.update(_lazy_exports(tree, mod))
        line_f = _uses_file(tree)
        if line_f is not None and rel not in DATA_FILES:
            rep.problems.append(f"{rel}:{line_f}: locates files through __file__ (not in a "
                                "bundle); explain it in bundle_check.DATA_FILES or avoid it")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    bad = 0
    for h in argv:
        rep = check(h)
        print(f"{h}: {len(rep.modules)} fuseproto modules, third-party "
              f"{', '.join(sorted(rep.third_party)) or 'none'}; dynamic imports explained: "
              f"{', '.join(rep.dynamic) or 'none'}; to name to PyInstaller: "
              f"{', '.join(sorted(rep.hidden)) or 'none'}")
        for p in rep.problems:
            print(f"  PROBLEM {p}")
        bad += bool(rep.problems)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path.cwd()))
    sys.exit(main(sys.argv[1:]))
