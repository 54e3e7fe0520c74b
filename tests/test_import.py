"""Never silently slow: without the compiled core the package refuses to import
and says how to build it."""
import subprocess
import sys
import textwrap


def test_missing_extension_fails_loudly():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.startswith("unstoppable._core.") and name != "unstoppable._core":
                    raise ImportError(f"blocked {name}")
                return None
        sys.meta_path.insert(0, Block())
        try:
            import unstoppable
        except ImportError as e:
            print(str(e))
            sys.exit(3)
        sys.exit(0)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "compiled core" in out.stdout and "pip install -e ." in out.stdout
    assert "no slow fallback" in out.stdout


def test_import_does_not_load_pyarrow_and_gives_arrow_methods():
    """`import unstoppable` registers the Arrow methods of Topic and Partition
    (unstoppable.columnar) without importing pyarrow."""
    code = textwrap.dedent("""
        import sys
        import unstoppable
        from unstoppable import columnar
        assert "pyarrow" not in sys.modules, "import unstoppable imported pyarrow"
        assert columnar.implementation() is unstoppable.arrow
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def test_layers_do_not_import_upwards():
    """storage imports neither unstoppable.arrow nor the client (lazy imports
    count); arrow and partitioning do not import the client."""
    import ast
    import os
    import unstoppable
    root = os.path.dirname(unstoppable.__file__)

    def imports(rel):
        found = set()
        for dp, _, fs in os.walk(os.path.join(root, rel)) if os.path.isdir(os.path.join(root, rel)) \
                else [(root, None, [rel])]:
            for f in fs:
                if not f.endswith(".py"):
                    continue
                tree = ast.parse(open(os.path.join(dp, f)).read())
                for n in ast.walk(tree):
                    if isinstance(n, ast.Import):
                        found |= {a.name for a in n.names}
                    elif isinstance(n, ast.ImportFrom) and n.module:
                        found |= {n.module} | {f"{n.module}.{a.name}" for a in n.names}
        return found

    def under(names, pkg):
        return sorted(x for x in names if x == pkg or x.startswith(pkg + "."))

    storage = imports("storage")
    assert under(storage, "unstoppable.arrow") == []
    assert under(storage, "unstoppable.client") == []
    assert under(imports("arrow"), "unstoppable.client") == []
    assert [x for x in imports("partitioning.py") if x.startswith("unstoppable.")
            and not x.startswith("unstoppable._core")] == []
