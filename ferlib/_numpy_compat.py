"""Let MXNet 1.9.1 import under numpy >= 1.24.

MXNet 1.9.1 (the last release) still refers to ``np.bool``, ``np.int`` and the
other builtin-type aliases that numpy deprecated in 1.20 and removed in 1.24.
Python 3.12 has no wheel of numpy older than 1.26, so there the aliases must be
put back before ``import mxnet``. They are plain references to the builtins,
exactly what numpy < 1.24 provided, so nothing else changes.
"""
import builtins

import numpy as np

_REMOVED_ALIASES = ("bool", "int", "float", "complex", "object", "str")


def restore_numpy_aliases():
    """Restore the builtin-type aliases that numpy 1.24 removed; return the names set."""
    # Look in the module dict, not getattr: on numpy 1.20-1.23 getattr would
    # succeed with a DeprecationWarning; setting the alias there is harmless.
    restored = [name for name in _REMOVED_ALIASES if name not in vars(np)]
    for name in restored:
        setattr(np, name, getattr(builtins, name))
    return restored
