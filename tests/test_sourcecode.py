"""Lint and typing gates, as msgspec and asyncpg keep them in their suites:
ruff with the rule set chosen in pyproject.toml ([tool.ruff]), mypy over the
stubs of the compiled modules, and the package's import structure (no cycle,
no private name imported across packages)."""
import ast
import glob
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
SRC = os.path.join(ROOT, "src")
PKG = os.path.join(SRC, "unstoppable")


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


@pytest.mark.skipif(shutil.which("ruff") is None and
                    subprocess.run([sys.executable, "-m", "ruff", "--version"],
                                   capture_output=True).returncode != 0,
                    reason="ruff is not installed (pip install -e '.[test]')")
def test_ruff():
    out = _run("ruff", "check", "src", "tests", "bench")
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_stubs():
    stubs = sorted(glob.glob(os.path.join(PKG, "_core", "*.pyi")) +
                   glob.glob(os.path.join(PKG, "booking", "_*.pyi")))
    assert stubs
    # Errors in the stubs only: modules they import are followed silently.
    out = _run("mypy", "--no-error-summary", "--follow-imports=silent", *stubs)
    assert out.returncode == 0, out.stdout + out.stderr


def _modules():
    mods = {}
    for dp, _, fs in os.walk(PKG):
        for f in fs:
            if f.endswith(".py") and not f.endswith("_pb2.py"):
                p = os.path.join(dp, f)
                m = os.path.relpath(p, SRC)[:-3].replace(os.sep, ".")
                mods[m.removesuffix(".__init__")] = p
    return mods


def _edges(mods):
    """Every import among the package's modules, lazy ones included."""
    edges, private = {m: set() for m in mods}, []
    for m, p in mods.items():
        pkg = m if p.endswith("__init__.py") else m.rpartition(".")[0]
        for n in ast.walk(ast.parse(open(p, encoding="utf-8").read())):
            targets = []
            if isinstance(n, ast.Import):
                targets = [(a.name, None) for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[:len(parts) - n.level + 1] + ([base] if base else []))
                targets = [(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base, a.name)
                           for a in n.names]
            for t, name in targets:
                if t in mods and t != m:
                    edges[m].add(t)
                    if (name and name.startswith("_") and not name.startswith("__")
                            and t.split(".")[:2] != m.split(".")[:2]):
                        private.append(f"{m} imports {t}.{name}")
    return edges, private


def test_no_import_cycle_and_no_private_cross_package_import():
    mods = _modules()
    edges, private = _edges(mods)
    assert private == []
    # Tarjan's strongly connected components.
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in mods:
        if v not in index:
            visit(v)
    assert comps == []
