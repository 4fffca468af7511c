"""Notebook 02 (training) runs headless in quick mode and leaves a complete run folder."""
import json

import pytest

from ferlib import MODES
from ferlib.train import HISTORY_KEYS

from conftest import run_notebook


@pytest.mark.slow
def test_notebook_02_trains_in_quick_mode(tmp_path):
    runs = tmp_path / "runs"
    nb = run_notebook("02_training.ipynb", tmp_path, QUICK=True, DATA_DIR=str(tmp_path / "no-real-data"),
                      OUT_DIR=str(tmp_path / "out"), RUNS_DIR=str(runs), GPUS="cpu")
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    run = runs / "02_training"
    history = json.loads((run / "history.json").read_text())
    assert history and set(history[0]) == set(HISTORY_KEYS)
    assert json.loads((run / "best.json").read_text())["val_acc"] > 0.5  # the notebook asserts it too
    for name in ("config.json", "best.params", "model-symbol.json", "model-0000.params", "labels.json"):
        assert (run / name).is_file(), name
    assert all((runs / "02_schemes" / mode / "history.json").is_file() for mode in MODES)
    images = [o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the face, the live plot, the scheme comparison
