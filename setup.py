"""Build of the compiled core: a plain list of Extensions plus cythonize().

Environment toggles:
  UNSTOPPABLE_DEBUG=1     -O0 -g, Cython line tracing off, assertions on
  UNSTOPPABLE_ANNOTATE=1  write cython -a HTML next to each .pyx
  UNSTOPPABLE_SANITIZE=1  build with -fsanitize=address,undefined
"""
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("UNSTOPPABLE_DEBUG") == "1"
ANNOTATE = os.environ.get("UNSTOPPABLE_ANNOTATE") == "1"
SANITIZE = os.environ.get("UNSTOPPABLE_SANITIZE") == "1"

cflags = ["-Wall", "-Wno-unused-function", "-std=gnu11", "-pthread"]
ldflags = ["-pthread"]
if DEBUG:
    cflags += ["-O0", "-g3", "-UNDEBUG"]
else:
    cflags += ["-O3"]
if SANITIZE:
    cflags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    ldflags += ["-fsanitize=address,undefined"]

CORE = "src/unstoppable/_core"


def ext(name, *c_sources):
    return Extension(
        f"unstoppable._core.{name}",
        [f"{CORE}/{name}.pyx"] + [f"csrc/{c}" for c in c_sources],
        include_dirs=["csrc"],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
        depends=[f"csrc/{h}" for h in os.listdir("csrc") if h.endswith(".h")]
        + [f"{CORE}/{p}" for p in os.listdir(CORE) if p.startswith(f"{name}_") and p.endswith(".pxi")],
    )


extensions = [
    ext("hashing", "crc32c.c", "xxhash64.c", "murmur2.c"),
    ext("batch", "batch.c", "crc32c.c"),
    ext("segment", "batch.c", "crc32c.c", "writer.c", "guard.c", "syncer.c", "xxhash64.c"),
    ext("arrow", "batch.c", "crc32c.c", "xxhash64.c", "murmur2.c"),
    ext("delivery"),
    ext("accumulate", "xxhash64.c", "murmur2.c"),
    # The booking service's fast path (its own package: it decides what
    # booking/machine.py does, and imports it).
    # (include_dirs: it cimports _core.batch's Record, whose .pxd names csrc's headers.)
    Extension("unstoppable.booking._decide", ["src/unstoppable/booking/_decide.pyx"],
              include_dirs=["csrc"], extra_compile_args=cflags, extra_link_args=ldflags),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "embedsignature": True,
            "binding": False,
        },
        annotate=ANNOTATE,
        include_path=["src"],
    ),
)
