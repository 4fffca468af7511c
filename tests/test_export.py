"""ONNX export: MXNet's exporter, checked against MXNet with ONNX Runtime."""
import json

import numpy as np
import pytest

import ferlib  # noqa: F401  (before mxnet)
from ferlib import EMOTIONS
from ferlib import model as fer_model
from ferlib.errors import FERError
from ferlib.export import PROBABILITY_TOLERANCE, check_onnx, export_onnx, sample_batch
from ferlib.transforms import preprocess

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import mxnet as mx  # noqa: E402

INPUT_SIZE = 48


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder with an exported BatchNorm VGG trained briefly on synthetic faces.

    A few dozen SGD steps are enough to make its outputs differ clearly from
    face to face (an untrained deep net answers nearly the same for every
    input, which would make "the same top class" a weak check), and they fill
    the BatchNorm running statistics that the export must carry over.
    """
    from ferlib.synth import make_faces

    run_dir = tmp_path_factory.mktemp("onnx-run")
    mx.random.seed(0)
    faces = make_faces(256, seed=1)
    keep = faces.drawn >= 0
    x = mx.nd.array(preprocess(faces.images[keep], size=INPUT_SIZE))
    y = mx.nd.array(faces.drawn[keep])
    net = fer_model.get_model("vgg13_small", input_size=INPUT_SIZE, conv_dropout=0.0, dense_dropout=0.0)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    trainer = mx.gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.01, "momentum": 0.9})
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.default_rng(0)
    for _ in range(30):
        batch = mx.nd.array(rng.choice(len(y), 32, replace=False), dtype="int32")
        with mx.autograd.record():
            loss = loss_fn(net(x.take(batch)), y.take(batch))
        loss.backward()
        trainer.step(32)
    fer_model.export_net(net, run_dir, INPUT_SIZE)
    (run_dir / "config.json").write_text(json.dumps({
        "model": "vgg13_small", "model_kwargs": {"input_size": INPUT_SIZE}, "input_size": INPUT_SIZE,
        "emotions": list(EMOTIONS)}))
    return run_dir


@pytest.fixture(scope="module")
def onnx_path(run_dir, tmp_path_factory):
    return export_onnx(run_dir, tmp_path_factory.mktemp("onnx") / "fer.onnx")


def test_onnx_model_is_valid_with_one_dynamic_batch_input(onnx_path):
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model)
    [graph_input] = model.graph.input  # the weights are initializers, not inputs
    assert graph_input.name == "data"
    dims = graph_input.type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value")  # free batch size
    assert [d.dim_value for d in dims[1:]] == [1, INPUT_SIZE, INPUT_SIZE]
    assert len(model.graph.output) == 1


def test_onnxruntime_matches_mxnet_on_a_batch(run_dir, onnx_path):
    batch = sample_batch(INPUT_SIZE, n=24, seed=3)
    result = check_onnx(run_dir, onnx_path, batch)
    assert result["same_top_class"] and result["batch_size"] == 24
    assert result["max_abs_diff"] <= PROBABILITY_TOLERANCE
    # Here is why agreeing top classes mean something: they vary and are not near-ties.
    net = fer_model.load_exported(run_dir)
    probabilities = mx.nd.softmax(net(mx.nd.array(batch))).asnumpy()
    top_two = np.sort(probabilities, axis=1)[:, -2:]
    assert len(set(probabilities.argmax(axis=1))) >= 2
    assert ((top_two[:, 1] - top_two[:, 0]) > 10 * PROBABILITY_TOLERANCE).mean() > 0.8


def test_onnxruntime_takes_any_batch_size(run_dir, onnx_path):
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batch = sample_batch(INPUT_SIZE, n=7, seed=4)
    net = fer_model.load_exported(run_dir)
    for n in (1, 7):
        logits = session.run(None, {"data": batch[:n]})[0]
        assert logits.shape == (n, len(EMOTIONS))
        np.testing.assert_allclose(logits, net(mx.nd.array(batch[:n])).asnumpy(), atol=1e-3, rtol=1e-4)


def test_check_onnx_catches_a_different_network(run_dir, onnx_path, tmp_path):
    other = tmp_path / "other"
    net = fer_model.get_model("vgg13_small", input_size=INPUT_SIZE)
    net.initialize(mx.init.Xavier())
    fer_model.export_net(net, other, INPUT_SIZE)
    (other / "config.json").write_text((run_dir / "config.json").read_text())
    with pytest.raises(FERError, match="disagrees with MXNet"):
        check_onnx(other, onnx_path)


def test_export_command(run_dir, tmp_path, capsys):
    from ferlib.cli import main

    assert main(["export", "--run", str(run_dir), "--onnx", str(tmp_path / "out" / "fer.onnx")]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime agrees with MXNet on 16 faces" in out
    assert (tmp_path / "out" / "fer.onnx").is_file()
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_export_reports_a_run_without_network(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"input_size": INPUT_SIZE}))
    with pytest.raises(FERError, match="model-symbol.json is missing"):
        export_onnx(tmp_path, tmp_path / "fer.onnx")
