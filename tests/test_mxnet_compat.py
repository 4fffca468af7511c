"""MXNet 1.9.1 and gluoncv on numpy 1.x and 2.x: every numpy name they look up exists."""
import ast
import math
import re
from pathlib import Path

import mxnet
import numpy as np
import pytest

from ferlib import _mxnet_compat

def numpy_lookups(package_dir):
    """``{name: first place}`` of every attribute looked up on the real numpy in a package's code.

    Follows only the names a module binds with ``import numpy [as X]`` (``from .. import numpy
    as np`` in MXNet is its own numpy), and only in code, not in docstrings.
    """
    found = {}
    for path in sorted(Path(package_dir).rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(errors="ignore"))
        except SyntaxError:
            continue
        aliases = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                   for alias in node.names if alias.name == "numpy"}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                found.setdefault(node.attr, f"{path.relative_to(package_dir)}:{node.lineno}")
    return found


def dispatch_table_names():
    """The numpy function names mxnet.numpy_dispatch_protocol looks up with getattr at import."""
    text = (Path(mxnet.__file__).parent / "numpy_dispatch_protocol.py").read_text()
    table = text[text.index("_NUMPY_ARRAY_FUNCTION_LIST = ["):]
    table = table[:table.index("]")]
    return re.findall(r"'([A-Za-z_]\w*)'", table)


def test_every_numpy_name_mxnet_and_gluoncv_look_up_exists_after_the_restore():
    _mxnet_compat.restore_numpy_names()
    import gluoncv

    lookups = numpy_lookups(Path(mxnet.__file__).parent)
    lookups.update(numpy_lookups(Path(gluoncv.__file__).parent / "model_zoo"))
    lookups.update({name: "numpy_dispatch_protocol table" for name in dispatch_table_names()})
    assert len(lookups) > 250  # the scan really read the sources
    missing = {name: where for name, where in lookups.items() if name not in vars(np) and not hasattr(np, name)}
    assert not missing, f"numpy {np.__version__} lacks names MXNet/gluoncv use: {missing}"


def test_the_restored_names_behave_as_numpy_defined_them():
    _mxnet_compat.restore_numpy_names()
    assert np.round_(np.array([1.26]), 1)[0] == pytest.approx(1.3)
    assert np.product([2, 3, 4]) == 24
    assert np.alltrue([True, True]) and not np.sometrue([False, False])
    assert np.msort(np.array([[3, 1], [1, 2]])).tolist() == [[1, 1], [3, 2]]
    assert np.in1d([1, 2, 3], [2]).tolist() == [False, True, False]
    assert np.trapz([1.0, 1.0]) == 1.0
    assert np.NINF == -math.inf and np.PINF == math.inf and math.isnan(np.NaN) and np.PZERO == 0.0
    assert math.copysign(1, np.NZERO) == -1
    assert np.int is int and np.float is float and np.object is object
    with pytest.raises(NotImplementedError, match="numpy-financial"):
        np.pmt(0.05, 10, 1000)


def test_names_numpy_still_has_are_left_alone():
    replaced = set(_mxnet_compat._replacements(np))
    before = {name: vars(np)[name] for name in replaced if name in vars(np)}
    _mxnet_compat.restore_numpy_names()
    assert all(vars(np)[name] is value for name, value in before.items())
    assert np.bool is vars(np)["bool"]  # numpy 2's np.bool is np.bool_, not the builtin
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        assert np.bool is np.bool_


def test_mxnet_s_numpy_mode_imports_its_fallback_table():
    _mxnet_compat.restore_numpy_names()
    import mxnet.numpy.fallback as fallback

    assert fallback.msort is np.msort and fallback.alltrue is np.alltrue
