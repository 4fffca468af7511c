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


def first_code_cell(path):
    return "".join(next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")["source"])


def test_every_notebook_opens_with_the_same_set_up_cell():
    notebooks = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    cells = {path.name: first_code_cell(path) for path in notebooks}
    reference = cells[notebooks[0].name]
    assert all(cell == reference for cell in cells.values()), "the first cells differ"
    assert 'if "google.colab" in sys.modules:' in reference and "colab_setup(repo)" in reference
    for path in notebooks:  # installs happen in ferlib.install only, and paths are the repository's
        text = path.read_text()
        assert "pip install" not in text.replace("python -m pip install", ""), path.name
        assert '"../' not in text and "'../" not in text, path.name


def test_notebook_paths_are_relative_to_the_repository(monkeypatch, tmp_path):
    from ferlib import paths

    monkeypatch.chdir(tmp_path)  # wherever the kernel starts
    assert paths.repo_root() == REPO
    assert paths.resolve("data") == REPO / "data"
    assert paths.resolve(tmp_path / "x") == tmp_path / "x" and paths.resolve(None) is None
    monkeypatch.setenv("FERLIB_REPO", str(tmp_path))  # not a repository: ignored
    assert paths.repo_root() == REPO
