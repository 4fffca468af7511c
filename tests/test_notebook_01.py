"""Notebook 01 runs headless in quick mode, and is committed clean."""
import json

import pytest

from conftest import REPO, run_notebook


def test_notebooks_are_committed_without_outputs():
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        nb = json.loads(path.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3", path.name
        dirty = [i for i, c in enumerate(nb["cells"]) if c.get("outputs") or c.get("execution_count")]
        assert not dirty, f"{path.name}: cells {dirty} keep outputs"
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: needs one cell tagged 'parameters'"
        headings = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]
        assert any("## Summary" in h for h in headings) and any("## Exercises" in h for h in headings)


@pytest.mark.slow
def test_notebook_01_runs_in_quick_mode(tmp_path):
    nb = run_notebook("01_data.ipynb", tmp_path, QUICK=True, DATA_DIR=str(tmp_path / "no-real-data"),
                      OUT_DIR=str(tmp_path / "out"), SYNTHETIC_FACES=600)
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert (tmp_path / "out" / "cache-synthetic" / "ferplus.npz").is_file()
    images = [o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # class balance, entropy, faces with votes, augmentation
