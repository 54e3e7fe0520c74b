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
