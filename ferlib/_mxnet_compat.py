"""Let MXNet 1.9.1 and gluoncv 0.10.5 import and run on today's numpy (1.x and 2.x) and Python.

MXNet 1.9.1 is the last release. It still looks up numpy names that numpy has
since removed: the builtin-type aliases (gone in 1.24), the financial functions
(moved out in 1.20) and a set of constants and function aliases (gone in 2.0 and
later). ``restore_numpy_names()`` puts each one back, before ``import mxnet``,
exactly as the numpy that had it defined it, so nothing else changes and no
environment has to downgrade numpy. A name numpy still has is never touched.

MXNet also imports ``distutils``, which Python 3.12 removed; setuptools provides
it (:func:`provide_distutils`).

:func:`prepare_mxnet_import` does both. This module imports nothing but numpy and
setuptools, and only when called: the installer imports ``ferlib`` before they exist.
"""
import builtins
import importlib.util
import math
import types


def _removed_in_numpy_1_20(name):
    def financial(*args, **kwargs):
        raise NotImplementedError(
            f"numpy.{name} moved to the numpy-financial package in numpy 1.20; "
            f"ferlib restores the name only so that MXNet 1.9.1 can import its fallback table"
        )

    financial.__name__ = name
    return financial


def _replacements(np):
    """name -> (value, where MXNet 1.9.1 or gluoncv 0.10.5 looks it up, when numpy removed it)."""
    return {
        # Builtin aliases, removed in numpy 1.24 (np.bool came back in 2.0 as np.bool_).
        "bool": (builtins.bool, "mxnet.ndarray, gluoncv dtype tables", "1.24"),
        "int": (builtins.int, "mxnet.numpy.random, gluoncv model_zoo", "1.24"),
        "float": (builtins.float, "gluoncv data transforms", "1.24"),
        "complex": (builtins.complex, "mxnet dtype tables", "1.24"),
        "object": (builtins.object, "mxnet dtype tables", "1.24"),
        "str": (builtins.str, "mxnet dtype tables", "1.24"),
        # Constants, removed in numpy 2.0.
        "PZERO": (0.0, "mxnet.numpy.utils (imported by import mxnet)", "2.0"),
        "NZERO": (-0.0, "mxnet.numpy.utils", "2.0"),
        "PINF": (math.inf, "mxnet.numpy.utils", "2.0"),
        "NINF": (-math.inf, "mxnet.numpy.utils, mxnet.ndarray.contrib", "2.0"),
        "NAN": (math.nan, "mxnet.numpy.utils", "2.0"),
        "NaN": (math.nan, "mxnet.numpy.utils", "2.0"),
        "Inf": (math.inf, "mxnet.gluon.contrib.estimator", "2.0"),
        # Function aliases, removed in numpy 2.0 (mxnet.numpy_dispatch_protocol and
        # mxnet.numpy.fallback look them up by name when MXNet's numpy mode is used).
        "round_": (np.round, "mxnet.numpy_dispatch_protocol", "2.0"),
        "product": (np.prod, "mxnet.numpy_dispatch_protocol", "2.0"),
        "sometrue": (np.any, "mxnet.numpy_dispatch_protocol", "2.0"),
        "alltrue": (np.all, "mxnet.numpy.fallback", "2.0"),
        "msort": (lambda a: np.sort(a, axis=0), "mxnet.numpy.fallback", "2.0"),
        # numpy.compat, removed in 2.0: mxnet's np.pad checks isinstance(mode, np.compat.basestring).
        "compat": (types.SimpleNamespace(basestring=str), "mxnet.ndarray.numpy, mxnet.symbol.numpy", "2.0"),
        # Functions removed after 2.0 under their old names.
        "trapz": (getattr(np, "trapezoid", None), "mxnet.numpy.fallback", "2.4"),
        "in1d": (lambda a, b, **kw: np.isin(np.ravel(a), b, **kw), "mxnet.numpy.fallback", "2.4"),
        # Financial functions, moved to numpy-financial in numpy 1.20.
        **{
            name: (_removed_in_numpy_1_20(name), "mxnet.numpy.fallback", "1.20")
            for name in ("mirr", "npv", "pmt", "ppmt", "pv", "rate")
        },
    }


def restore_numpy_names():
    """Put back the numpy names MXNet 1.9.1 still uses; return the names set (none on old numpy).

    A no-op when numpy is not installed yet (``python -m ferlib.install`` runs then).
    """
    try:
        import numpy as np
    except ImportError:
        return []
    restored = []
    for name, (value, _user, _removed) in _replacements(np).items():
        # Look in the module dict, not hasattr: numpy 2 answers removed names from a
        # module __getattr__ that raises, and numpy 1.20-1.23 warns for the aliases.
        if name not in vars(np) and value is not None:
            setattr(np, name, value)
            restored.append(name)
    return restored



def provide_distutils():
    """Make ``import distutils`` work on Python 3.12+, where MXNet 1.9.1 still uses it.

    setuptools provides it through an import hook that its ``.pth`` file installs when Python
    starts. A process that started before setuptools was installed (a Colab kernel whose first
    cell installs ferlib) lacks the hook; importing setuptools installs it. Returns whether
    ``distutils`` is importable now.
    """
    if importlib.util.find_spec("distutils") is None:
        try:
            import setuptools  # noqa: F401  (its import puts setuptools' distutils in place)
        except ImportError:
            return False
    return importlib.util.find_spec("distutils") is not None


def prepare_mxnet_import():
    """Everything MXNet 1.9.1 needs before ``import mxnet``; returns the numpy names restored."""
    provide_distutils()
    return restore_numpy_names()
