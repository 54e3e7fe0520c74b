"""Compiled core (Cython over csrc/). Private: use the public modules."""
