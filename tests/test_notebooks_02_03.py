"""Notebooks 02 (the network and the loss) and 03 (training) run headless in quick mode and leave
their run folders."""
import json

import pytest

from ferlib import MODES
from ferlib.train import HISTORY_KEYS

from conftest import run_notebook


def _run_quick(name, tmp_path):
    """Execute notebook ``name`` in quick mode on the synthetic set; its runs folder."""
    runs = tmp_path / "runs"
    nb = run_notebook(name, tmp_path, QUICK=True, DATA_DIR=str(tmp_path / "no-real-data"),
                      OUT_DIR=str(tmp_path / "out"), RUNS_DIR=str(runs), GPUS="cpu")
    return nb, runs


def _errors(nb):
    return [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]


def _images(nb):
    return [o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]


@pytest.mark.slow
def test_notebook_02_compares_the_four_schemes_in_quick_mode(tmp_path):
    nb, runs = _run_quick("02_network_and_loss.ipynb", tmp_path)
    assert not _errors(nb)
    for mode in MODES:
        history = json.loads((runs / "02_schemes" / mode / "history.json").read_text())
        assert len(history) == 1 and set(history[0]) == set(HISTORY_KEYS)
    assert len(_images(nb)) >= 2  # the face with split votes, the scheme comparison


@pytest.mark.slow
def test_notebook_03_trains_in_quick_mode(tmp_path):
    nb, runs = _run_quick("03_training.ipynb", tmp_path)
    assert not _errors(nb)
    run = runs / "03_training"
    history = json.loads((run / "history.json").read_text())
    assert history and set(history[0]) == set(HISTORY_KEYS)
    assert json.loads((run / "best.json").read_text())["val_acc"] > 0.5  # it learns: chance is 1/8
    for name in ("config.json", "best.params", "model-symbol.json", "model-0000.params", "labels.json"):
        assert (run / name).is_file(), name
    assert len(_images(nb)) >= 1  # the live plot
