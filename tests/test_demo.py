"""The pipeline behind ``make demo``: real-file detection, notebook parameters, and one whole run."""
import json
import shutil
from pathlib import Path

import nbformat
import pytest

from ferlib import demo

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def test_find_real_files_needs_both_files(tmp_path):
    assert demo.find_real_files(tmp_path) is None
    (tmp_path / "fer2013.csv.gz").write_bytes(b"")
    assert demo.find_real_files(tmp_path) is None  # votes file missing
    (tmp_path / "fer2013new.csv").write_text("")
    assert demo.find_real_files(tmp_path) == (tmp_path / "fer2013.csv.gz", tmp_path / "fer2013new.csv")


def test_notebook_parameters_point_only_evaluation_and_serving_at_the_run(tmp_path):
    run_dir, cache_dir = tmp_path / "runs" / "demo", tmp_path / "cache"
    params = {nb.name: demo.notebook_parameters(nb, run_dir, cache_dir) for nb in sorted(NOTEBOOKS.glob("0*.ipynb"))}
    # 01 to 03 read the raw data folder as DATA_DIR: they must not receive the cache
    assert params["01_data.ipynb"] == {"QUICK": True}
    assert params["02_network_and_loss.ipynb"] == {"QUICK": True}
    assert params["03_training.ipynb"] == {"QUICK": True}
    assert params["04_evaluation.ipynb"] == {"QUICK": True, "RUN_DIR": str(run_dir.resolve()),
                                             "DATA_DIR": str(cache_dir.resolve())}
    assert params["05_serving.ipynb"] == {"QUICK": True, "RUN_DIR": str(run_dir.resolve())}
    # a run of the synthetic set is not served: notebook 05 then serves the pretrained network
    assert demo.notebook_parameters(NOTEBOOKS / "05_serving.ipynb", run_dir, cache_dir, serve_run=False) == {
        "QUICK": True}


def test_run_notebooks_refuses_a_folder_without_notebooks(tmp_path):
    with pytest.raises(FileNotFoundError, match="no numbered notebooks"):
        demo.run_notebooks(tmp_path, tmp_path / "out", tmp_path / "run", tmp_path / "cache")


@pytest.mark.slow
def test_demo_trains_serves_and_evaluates_its_own_run_in_notebook_04(tmp_path, capsys):
    pytest.importorskip("mms")
    notebook_dir = tmp_path / "notebooks"
    notebook_dir.mkdir()
    shutil.copy(NOTEBOOKS / "04_evaluation.ipynb", notebook_dir)

    status = demo.run_demo(data_dir=tmp_path / "no-data", out_dir=tmp_path / "build" / "demo", synthetic_faces=600,
                           seed=0, runs_dir=tmp_path / "runs", model_store=tmp_path / "model_store", num_epochs=2,
                           notebook_dir=notebook_dir, notebook_out=tmp_path / "executed",
                           notebook_extra={"WORK_DIR": str(tmp_path / "build" / "04_evaluation")})
    printed = capsys.readouterr().out
    assert status == 0
    run_dir = tmp_path / "runs" / "demo-synthetic"
    assert (run_dir / "model-symbol.json").is_file() and (run_dir / "history.json").is_file()
    assert len(json.loads((run_dir / "history.json").read_text())) == 2
    assert (tmp_path / "model_store" / "fer.mar").is_file()
    assert "test-time augmentation" in printed.lower() or "tta" in printed.lower()
    # without real data the demo ends with the pretrained network on the real sample photos
    astronaut = printed[printed.index("the pretrained network"):].split("astronaut: 1 face")[1].splitlines()[1]
    assert "happiness" in astronaut.split(":")[1].split("(")[0]
    for name in ("astronaut", "grace_hopper"):
        assert (tmp_path / "build" / "demo" / f"answer_{name}.png").is_file()

    # the notebook evaluated the demo's run, not a quick run of its own
    executed = nbformat.read(tmp_path / "executed" / "04_evaluation.ipynb", as_version=4)
    text = "".join(output.get("text", "") for cell in executed.cells if cell.cell_type == "code"
                   for output in cell.get("outputs", []))
    assert f"run {run_dir.resolve()}:" in text
    work_dir = tmp_path / "build" / "04_evaluation"  # the notebook's WORK_DIR
    assert not (work_dir / "run-quick").exists()
    notebook_eval = json.loads((work_dir / "eval-test.json").read_text())
    demo_eval = json.loads((run_dir / "eval-test.json").read_text())
    assert notebook_eval["accuracy"] == pytest.approx(demo_eval["accuracy"])
