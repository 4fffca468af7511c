"""The run folder has one owner, ferlib.run: its file names, its config, its exported network."""
import json
import re

import pytest

from ferlib import EMOTIONS, FERError, run
from ferlib import model as fer_model

from conftest import REPO


def test_the_file_names_of_a_run_folder_are_spelled_in_ferlib_run_only():
    names = [run.CONFIG, run.LABELS, run.HISTORY_JSON, run.HISTORY_CSV, run.BEST_JSON, run.BEST_PARAMS,
             run.CHECKPOINT_JSON, run.CHECKPOINT_PARAMS, run.CHECKPOINT_STATES, run.LOCK, run.EXPORT_SYMBOL,
             run.EXPORT_PARAMS, run.SERVING]
    literal = re.compile("|".join(rf"[\"']{re.escape(name)}[\"']" for name in names))
    spelled = [f"{path.relative_to(REPO)}:{i}" for path in sorted((REPO / "ferlib").rglob("*.py"))
               if path.name != "run.py"
               for i, line in enumerate(path.read_text().splitlines(), 1) if literal.search(line)]
    assert not spelled, spelled


def test_read_config_names_what_is_wrong(tmp_path):
    with pytest.raises(FERError, match="does not exist"):
        run.read_config(tmp_path / "nowhere")
    with pytest.raises(FERError, match="config.json is missing"):
        run.read_config(tmp_path)
    (tmp_path / run.CONFIG).write_text("{not json")
    with pytest.raises(FERError, match="not valid JSON"):
        run.read_config(tmp_path)
    (tmp_path / run.CONFIG).write_text("[1, 2]")
    with pytest.raises(FERError, match="JSON object"):
        run.read_config(tmp_path)
    (tmp_path / run.CONFIG).write_text(json.dumps({"model": "vgg13_small"}))
    with pytest.raises(FERError, match="lacks the key.*input_size"):
        run.read_config(tmp_path)
    (tmp_path / run.CONFIG).write_text(json.dumps({"input_size": 48}))
    assert run.read_config(tmp_path) == {"input_size": 48}


def test_the_exported_network_loads_from_a_run_folder(tmp_path):
    import mxnet as mx

    net = fer_model.get_model("vgg13_small", input_size=48)
    net.initialize()
    symbol, params = fer_model.export_net(net, tmp_path, 48)
    assert (symbol.name, params.name) == (run.EXPORT_SYMBOL, run.EXPORT_PARAMS)
    x = mx.nd.random.uniform(shape=(2, 1, 48, 48))
    loaded = run.load_exported(tmp_path)
    assert loaded(x).shape == (2, len(EMOTIONS))
    assert abs(loaded(x) - net(x)).max().asscalar() < 1e-5
    params.unlink()
    with pytest.raises(FERError, match="model-0000.params is missing"):
        run.load_exported(tmp_path)
