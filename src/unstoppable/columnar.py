"""Where storage objects find their Arrow methods.

``Topic.to_arrow``, ``Topic.to_batches``, ``Topic.append_arrow`` and
``Partition.append_arrow`` are storage methods, but Arrow is a layer above
storage (``unstoppable.arrow`` reads and appends through ``Topic`` and
``Partition``). So storage does not import it: it asks this module for the
implementation, which ``unstoppable.arrow`` registers when it is imported
(``import unstoppable`` imports it; pyarrow itself is imported only on first
use). This module imports nothing of the package.
"""
from __future__ import annotations

__all__ = ["register", "implementation"]

_impl = None


def register(impl) -> None:
    """Make ``impl`` (an object with ``to_arrow``, ``to_batches`` and
    ``append_arrow`` taking the Topic or Partition first) the implementation."""
    global _impl
    _impl = impl


def implementation():
    """The registered implementation (``unstoppable.arrow``)."""
    if _impl is None:
        raise ImportError("the Arrow methods of Topic and Partition need unstoppable.arrow, "
                          "which is not imported: `import unstoppable.arrow`")
    return _impl
