import os
import sys
from pathlib import Path

import pytest

# MXNet reads this at start-up: use the cores we have. (No MPLBACKEND here: notebook
# kernels must keep their inline backend, and matplotlib picks Agg without a display.)
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 2))

import ferlib  # noqa: E402  (applies the numpy shim before anything imports mxnet)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))  # the SciPy reference preprocessing is an oracle of the tests
SHARED_DATA = REPO.parent / "shared" / "data"


def default_sigint():
    """``preexec_fn`` of a child that a test stops with Ctrl-C (SIGINT). A test run started in the
    background by a shell (``make test &``) has SIGINT ignored, and children inherit that."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def shared_file(name):
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real data not available: {path} is absent")
    return path


@pytest.fixture(scope="session")
def real_ferplus_csv():
    return shared_file("fer2013new.csv")


@pytest.fixture(scope="session")
def real_fer2013_csv():
    return shared_file("fer2013.csv.gz")


@pytest.fixture(scope="session")
def synthetic_files(tmp_path_factory):
    """A small synthetic FER-format pair (fer2013.csv, fer2013new.csv), made once per session."""
    out = tmp_path_factory.mktemp("synthetic")
    return ferlib.synth.write_synthetic(out, n=600, seed=7)


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory, synthetic_files):
    """The prepared cache of :func:`synthetic_files`."""
    out = tmp_path_factory.mktemp("cache")
    ferlib.data.prepare(*synthetic_files, out, progress=False)
    return out


def run_notebook(name, out_dir, **parameters):
    """Execute notebooks/<name> into ``out_dir`` (see :func:`ferlib.demo.execute_notebook`)."""
    return ferlib.demo.execute_notebook(REPO / "notebooks" / name, out_dir, parameters)
