"""The lazy import of numpy.

numpy is optional (``pip install 'unstoppable[numpy]'``, also part of the
``arrow`` extra): ``import unstoppable`` never imports it, and the features
that return arrays (index views, vectorized lookups, ``partition_many``) call
:func:`require` when first used.
"""
from __future__ import annotations

EXTRA = "numpy"


def require():
    """The numpy module, or ImportError naming the extra that installs it."""
    try:
        import numpy
    except ImportError as e:
        raise ImportError(
            "this feature needs numpy, which is not installed; install it with "
            f"pip install 'unstoppable[{EXTRA}]' (or 'unstoppable[arrow]')") from e
    return numpy
