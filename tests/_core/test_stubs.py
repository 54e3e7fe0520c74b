"""The .pyi stubs of the compiled modules match what the modules export
(mypy's stubtest imports the real extensions and compares signatures)."""
import glob
import os
import subprocess
import sys

import unstoppable._core as core

HERE = os.path.dirname(__file__)
# Compiled modules outside _core: the booking service's fast path.
OTHERS = ["unstoppable.booking._decide"]


def test_every_compiled_module_has_a_stub_and_py_typed():
    pkg = os.path.dirname(core.__file__)
    root = os.path.dirname(os.path.dirname(pkg))
    others = [os.path.join(root, *m.split(".")) + ".pyx" for m in OTHERS]
    for pyx in glob.glob(os.path.join(pkg, "*.pyx")) + others:
        assert os.path.exists(pyx), pyx
        assert os.path.exists(pyx[:-4] + ".pyi"), f"no stub for {pyx}"
    assert os.path.exists(os.path.join(os.path.dirname(pkg), "py.typed"))


def test_stubtest():
    pkg = os.path.dirname(core.__file__)
    mods = sorted("unstoppable._core." + os.path.basename(p)[:-4]
                  for p in glob.glob(os.path.join(pkg, "*.pyx"))) + OTHERS
    out = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--allowlist",
         os.path.join(HERE, "stubtest_allowlist.txt"), *mods],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
