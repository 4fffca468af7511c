"""ferlib.evaluate: metrics on hand-made predictions with known answers, prediction
and TTA, Grad-CAM, evaluate_run / the CLI on a small run, and notebook 04."""
import json
import math
import os
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

import ferlib
from ferlib import EMOTIONS, FERError
from ferlib import evaluate as ev
from ferlib import model as fer_model
from ferlib import model as fm
from ferlib.cli import main as cli_main
from ferlib.data import FERPlusDataset, load_cache
from ferlib.transforms import preprocess

REPO = Path(__file__).resolve().parents[1]
K = len(EMOTIONS)


def onehot(labels):
    return np.eye(K)[np.asarray(labels)]


# A small split with every class present and known class counts.
LABELS = np.array([0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 1])


# --------------------------------------------------------------------------- metrics: known answers


def test_perfect_model():
    p = onehot(LABELS)
    assert ev.accuracy(p, onehot(LABELS)) == 1.0
    assert ev.accuracy(p, LABELS) == 1.0  # class ids work as well as one-hot rows
    assert ev.top_k_accuracy(p, LABELS, k=2) == 1.0
    cm = ev.confusion_matrix(p, LABELS)
    assert np.array_equal(cm, np.diag(np.bincount(LABELS, minlength=K)))
    per_class = ev.per_class_metrics(cm)
    for i, e in enumerate(EMOTIONS):
        assert per_class[e] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": int((LABELS == i).sum())}
    # Confidence 1 and always right: perfectly calibrated.
    assert ev.expected_calibration_error(p, LABELS) == 0.0
    assert ev.kl_divergence(p, onehot(LABELS)) == 0.0
    assert ev.cross_entropy(p, onehot(LABELS)) == 0.0


def test_uniform_model_follows_the_tie_rule_and_costs_log_8():
    p = np.full((len(LABELS), K), 1.0 / K)
    # Ties go to the first class: a uniform model always says "neutral".
    assert np.array_equal(ev.predicted_classes(p), np.zeros(len(LABELS)))
    assert ev.accuracy(p, LABELS) == pytest.approx(np.mean(LABELS == 0))
    assert ev.top_k_accuracy(p, LABELS, k=2) == pytest.approx(np.mean(LABELS <= 1))
    assert ev.top_k_accuracy(p, LABELS, k=K) == 1.0
    cm = ev.confusion_matrix(p, LABELS)
    assert np.array_equal(cm[:, 0], np.bincount(LABELS, minlength=K)) and cm[:, 1:].sum() == 0
    # Against a one-hot crowd, KL = CE = log 8; against a split crowd KL = log 8 - H(q).
    assert ev.kl_divergence(p, onehot(LABELS)) == pytest.approx(math.log(K))
    assert ev.cross_entropy(p, onehot(LABELS)) == pytest.approx(math.log(K))
    crowd = np.zeros((2, K))
    crowd[0, [0, 1]] = 0.5
    crowd[1, [2, 3, 4, 5]] = 0.25
    expected = np.mean([math.log(K) - math.log(2), math.log(K) - math.log(4)])
    assert ev.kl_divergence(p[:2], crowd) == pytest.approx(expected)
    # Confidence 1/8 everywhere (one bin): ECE = |accuracy - 1/8|.
    rel = ev.calibration(p, LABELS)
    assert ev.expected_calibration_error(p, LABELS) == pytest.approx(abs(np.mean(LABELS == 0) - 1 / K))
    assert sum(rel["count"]) == len(LABELS) and rel["count"][1] == len(LABELS)  # 1/8 lies in (1/15, 2/15]


def test_constant_model_fills_one_column():
    anger = EMOTIONS.index("anger")
    p = np.full((len(LABELS), K), 0.02)
    p[:, anger] = 1 - 0.02 * (K - 1)
    cm = ev.confusion_matrix(p, LABELS)
    support = np.bincount(LABELS, minlength=K)
    assert np.array_equal(cm[:, anger], support)
    assert cm.sum() == len(LABELS) and cm.sum(axis=0)[anger] == len(LABELS)
    per_class = ev.per_class_metrics(cm)
    assert per_class["anger"]["recall"] == 1.0
    assert per_class["anger"]["precision"] == pytest.approx(support[anger] / len(LABELS))
    assert per_class["neutral"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": int(support[0])}
    normalized = ev.normalize_rows(cm)
    assert np.allclose(normalized[:, anger], 1.0) and np.allclose(normalized.sum(axis=1), 1.0)


def test_per_class_metrics_by_hand():
    # 2 neutral faces: one right, one called happiness; 3 happiness faces: all right.
    cm = np.zeros((K, K), int)
    cm[0, 0], cm[0, 1], cm[1, 1] = 1, 1, 3
    m = ev.per_class_metrics(cm)
    assert m["neutral"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert m["happiness"]["precision"] == pytest.approx(3 / 4) and m["happiness"]["recall"] == 1.0
    assert m["happiness"]["f1"] == pytest.approx(2 * 0.75 / 1.75)
    # An absent class that is never predicted has zeros, not NaN.
    assert m["contempt"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    summary = ev.compute_metrics(np.vstack([onehot([0, 1]), onehot([1, 1, 1])]), [0, 0, 1, 1, 1])
    assert summary["macro_f1"] == pytest.approx((2 / 3 + 2 * 0.75 / 1.75) / 2)  # over classes present
    assert summary["confusion_matrix"] == cm.tolist()


def test_kl_is_zero_when_the_prediction_is_the_crowd_and_ce_adds_the_crowd_entropy():
    rng = np.random.default_rng(0)
    crowd = rng.dirichlet(np.ones(K), size=20)
    crowd[crowd < 0.1] = 0.0  # crowds leave classes out
    crowd /= crowd.sum(axis=1, keepdims=True)
    assert ev.kl_divergence(crowd, crowd) == 0.0
    other = rng.dirichlet(np.ones(K), size=20)
    kl = ev.kl_divergence(other, crowd, reduce=False)
    assert (kl > 0).all()
    ce = ev.cross_entropy(other, crowd, reduce=False)
    assert np.allclose(ce, ev.crowd_entropy(crowd) + kl)
    # A confident miss is expensive but finite.
    miss = ev.kl_divergence(onehot([1]), onehot([0]))
    assert math.isfinite(miss) and miss == pytest.approx(-math.log(ev.LOG_EPSILON))


def test_ece_is_zero_for_a_calibrated_toy_and_known_otherwise():
    # 10 faces at confidence 0.8 with 8 right, 5 at 0.4 with 2 right: calibrated.
    p = np.full((15, K), 0.0)
    p[:10, 0], p[:10, 1:] = 0.8, 0.2 / (K - 1)
    p[10:, 2], p[10:, 3:] = 0.4, 0.6 / (K - 3)
    p[10:, :2] = 0.0
    p /= p.sum(axis=1, keepdims=True)
    labels = np.array([0] * 8 + [5] * 2 + [2] * 2 + [6] * 3)
    assert ev.expected_calibration_error(p, labels) == pytest.approx(0.0, abs=1e-12)
    rel = ev.calibration(p, labels)
    assert rel["count"][11] == 10 and rel["count"][5] == 5  # 0.8 in (11/15, 12/15], 0.4 in (5/15, 6/15]
    assert rel["accuracy"][11] == pytest.approx(0.8) and rel["confidence"][5] == pytest.approx(0.4)
    assert len(rel["bin_edges"]) == ev.ECE_BINS + 1
    # All wrong at confidence 0.9: ECE 0.9.
    q = np.full((4, K), 0.1 / (K - 1))
    q[:, 0] = 0.9
    assert ev.expected_calibration_error(q, [1, 2, 3, 4]) == pytest.approx(0.9)
    # Against the crowd: predicting the crowd's own distribution is calibrated.
    rng = np.random.default_rng(1)
    crowd = rng.dirichlet(np.ones(K), size=50)
    assert ev.expected_calibration_error(crowd, crowd) == pytest.approx(0.0, abs=1e-12)
    assert ev.expected_calibration_error(onehot(crowd.argmax(axis=1)), crowd) > 0.1


def test_metric_input_errors():
    with pytest.raises(FERError, match=r"\(N, 8\)"):
        ev.accuracy(np.ones((3, 7)) / 7, [0, 1, 2])
    with pytest.raises(FERError, match="3 predictions but 2 targets"):
        ev.accuracy(onehot([0, 1, 2]), [0, 1])
    with pytest.raises(FERError, match="class ids"):
        ev.confusion_matrix(onehot([0]), np.array([9]))
    with pytest.raises(FERError, match="k must be"):
        ev.top_k_accuracy(onehot([0]), [0], k=0)
    with pytest.raises(FERError, match="crowd targets"):
        ev.kl_divergence(onehot([0, 1]), onehot([0]))
    with pytest.raises(FERError, match="8x8"):
        ev.per_class_metrics(np.eye(7))


# --------------------------------------------------------------------------- networks and runs


def make_run(run_dir, model_kwargs=None, seed=0):
    """A run folder as RUN_FOLDER.md describes it, with a randomly initialised vgg13_small."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    mx.random.seed(seed)
    net = fm.get_model("vgg13_small", **(model_kwargs or {}))
    fm.initialize(net)
    net(mx.nd.zeros((1, 1, 64, 64)))
    net.save_parameters(str(run_dir / "best.params"))
    config = {"model": "vgg13_small", "model_kwargs": dict(model_kwargs or {}), "mode": "crossentropy",
              "input_size": 64, "emotions": list(EMOTIONS), "num_epochs": 1, "batch_size": 32, "lr": 0.05,
              "schedule": "ferplus", "wd": 0.0, "momentum": 0.9, "seed": seed, "devices": ["cpu(0)"],
              "data": "synthetic", "ferlib_version": ferlib.__version__}
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir, net


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run") / "tiny")


@pytest.fixture(scope="module")
def faces(synthetic_cache):
    data = load_cache(synthetic_cache)
    rows = data.split_indices("test")[:6]
    return data.images[rows], data.boxes[rows]


def test_view_inputs_plain_is_preprocess_and_flip_mirrors(faces):
    images, boxes = faces
    plain = ev.view_inputs(images, boxes, 64, ev.View())
    assert np.array_equal(plain, preprocess(images, boxes, 64))
    flipped = ev.view_inputs(images, boxes, 64, ev.View(flip=True))
    assert np.allclose(flipped, plain[..., ::-1], atol=1e-5)
    shifted = ev.view_inputs(images, boxes, 64, ev.View(0.05, 0.0))
    assert shifted.shape == plain.shape and not np.allclose(shifted, plain)
    assert len(ev.TTA_VIEWS) == 6 and ev.TTA_VIEWS[0] == ev.View()


def test_predict_probabilities_views_and_batches(tiny_run, faces):
    _, net = tiny_run
    images, boxes = faces
    p = ev.predict_probabilities(net, images, boxes, views=ev.TTA_VIEWS, batch_size=4)
    assert p.shape == (len(ev.TTA_VIEWS), len(images), K)
    assert np.allclose(p.sum(axis=2), 1.0, atol=1e-5)
    direct = mx.nd.softmax(net(mx.nd.array(preprocess(images, boxes))), axis=1).asnumpy()
    assert np.allclose(p[0], direct, atol=1e-5)  # batching does not change the plain view
    single = ev.predict_probabilities(net, images[0])  # one 2-D image
    assert single.shape == (1, 1, K) and np.allclose(single[0, 0], direct[0], atol=1e-5)
    with pytest.raises(FERError, match="views"):
        ev.predict_probabilities(net, images, views=[])


def test_a_network_with_another_class_count_is_refused(faces):
    net = fm.get_model("vgg13_small", classes=7)
    fm.initialize(net)
    with pytest.raises(FERError, match="8"):
        ev.predict_probabilities(net, faces[0])


def _channel_derivative(head, activations, class_ids, channel, eps=1e-4):
    """d(sum of class logits)/d(shift of a whole channel), by central differences."""
    bump = np.zeros_like(activations)
    bump[:, channel] = eps

    def score(a):
        return head(mx.nd.array(a)).asnumpy()[np.arange(len(a)), class_ids].astype(np.float64).sum()
    return (score(activations + bump) - score(activations - bump)) / (2 * eps)


@pytest.mark.parametrize("hybridize", [False, True])
def test_grad_cam_maps_and_gradients(tiny_run, faces, hybridize):
    _, net = tiny_run
    images, boxes = faces
    if hybridize:
        net.hybridize()
    try:
        x = preprocess(images, boxes)
        cams, class_ids, probabilities = ev.grad_cam(net, x)
        assert cams.shape == (len(images), 64, 64) and cams.dtype == np.float32
        assert cams.min() >= 0.0 and cams.max() <= 1.0
        assert all(c.max() in (0.0, 1.0) for c in cams)
        assert np.array_equal(class_ids, probabilities.argmax(axis=1))
        # The head after the split reproduces the network.
        body, head = fer_model.saliency_split(net)
        xx = mx.nd.array(x)
        assert np.allclose(head(body(xx)).asnumpy(), net(xx).asnumpy(), atol=1e-5)
        # The gradients are right: summed over a channel they are the derivative
        # of the logit for shifting that whole channel (no max-pool tie issues).
        a, g, _, _ = ev.class_activation_gradients(net, x, class_ids)
        assert a.shape[2:] == (8, 8)  # last conv block of VGG13 at a 64 input, before its pooling
        for channel in np.argsort(-np.abs(g.sum(axis=(0, 2, 3))))[:3]:
            expected = _channel_derivative(head, a, class_ids, channel)
            assert g[:, channel].sum() == pytest.approx(expected, rel=0.03, abs=1e-4)
        # Another class gives another map.
        other = ev.grad_cam(net, x, class_ids=(class_ids + 1) % K)[0]
        assert not np.allclose(other, cams)
    finally:
        net.hybridize(False)


def test_grad_cam_faces_and_errors(tiny_run, faces):
    _, net = tiny_run
    images, boxes = faces
    cams, crops, class_ids, probabilities = ev.grad_cam_faces(net, images, boxes, class_ids=3)
    assert crops.shape == cams.shape == (len(images), 64, 64) and crops.dtype == np.uint8
    assert (class_ids == 3).all() and probabilities.shape == (len(images), K)
    # A network for 48-pixel input gives 48-pixel maps.
    net48 = fm.initialize(fm.get_model("vgg13_small", input_size=48))
    cams48, crops48, _, _ = ev.grad_cam_faces(net48, images, boxes, size=48)
    assert cams48.shape == crops48.shape == (len(images), 48, 48) and cams48.min() >= 0
    with pytest.raises(FERError, match="class ids"):
        ev.grad_cam(net, preprocess(images), class_ids=8)
    with pytest.raises(FERError, match=r"\(N, 1, S, S\)"):
        ev.grad_cam(net, np.zeros((2, 64, 64), np.float32))
    with pytest.raises(FERError, match="does not know"):
        fer_model.saliency_split(mx.gluon.nn.Dense(8))


def test_evaluate_run_on_a_small_run(tiny_run, synthetic_cache, tmp_path):
    run_dir, net = tiny_run
    out = tmp_path / "eval" / "test.json"
    result = ev.evaluate_run(run_dir, synthetic_cache, split="test", tta=True, json_path=out)
    for key in ("accuracy", "top2_accuracy", "per_class", "confusion_matrix", "kl", "cross_entropy", "ece",
                "tta_accuracy", "tta_top2_accuracy", "tta_per_class", "tta_confusion_matrix", "tta_kl",
                "tta_cross_entropy", "tta_ece"):
        assert key in result, key
    # The confusion matrix covers the split's majority faces exactly.
    data = load_cache(synthetic_cache)
    majority = FERPlusDataset(data, "test", "majority")
    crowd = FERPlusDataset(data, "test", "crossentropy")
    assert np.sum(result["confusion_matrix"]) == len(majority) == result["num_faces"]
    assert np.sum(result["tta_confusion_matrix"]) == len(majority)
    assert result["num_crowd_faces"] == len(crowd)
    assert [row["support"] for row in result["per_class"].values()] == \
        np.bincount(majority.labels, minlength=K).tolist()
    # The accuracy is that of the network on the preprocessed test faces.
    logits = net(mx.nd.array(preprocess(majority.images, majority.boxes))).asnumpy()
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(axis=1) == majority.labels))
    # The JSON holds the same figures; the .npz beside it recomputes every one.
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["predictions"] == str(out.with_suffix(".npz"))
    predictions = ev.load_predictions(result)
    assert np.array_equal(predictions.rows, np.union1d(majority.rows, crowd.rows))
    recomputed = ev.evaluate_predictions(predictions)
    for key in ("accuracy", "kl", "cross_entropy", "ece", "tta_accuracy", "tta_ece"):
        assert recomputed[key] == pytest.approx(result[key]), key
    assert recomputed["confusion_matrix"] == result["confusion_matrix"]
    assert predictions.views == [v.name for v in ev.TTA_VIEWS]
    assert np.allclose(predictions.tta_probabilities, predictions.view_probabilities.mean(axis=0))
    # ... and so does the confusion matrix alone.
    cm = np.array(result["confusion_matrix"])
    assert np.trace(cm) / cm.sum() == pytest.approx(result["accuracy"])
    assert ev.per_class_metrics(cm) == result["per_class"]
    text = ev.format_result(result)
    assert "TTA" in text and "KL" in text and all(e in text for e in EMOTIONS)


def test_evaluate_run_errors(tiny_run, synthetic_cache, tmp_path):
    run_dir, _ = tiny_run
    with pytest.raises(FERError, match="unknown split 'dev'"):
        ev.evaluate_run(run_dir, synthetic_cache, split="dev", save=False)
    no_params = tmp_path / "no_params"
    no_params.mkdir()
    (no_params / "config.json").write_text((run_dir / "config.json").read_text())
    with pytest.raises(FERError, match="best.params is missing"):
        ev.evaluate_run(no_params, synthetic_cache, save=False)
    seven, _ = make_run(tmp_path / "seven", model_kwargs={"classes": 7})
    with pytest.raises(FERError, match="7 outputs.*8 FER\\+ emotions"):
        ev.evaluate_run(seven, synthetic_cache, save=False)
    with pytest.raises(FERError, match="not a prepared FER\\+ cache"):
        ev.evaluate_run(run_dir, tmp_path, save=False)
    with pytest.raises(FERError, match="does not exist"):
        ev.load_predictions(tmp_path / "missing.npz")


def test_cli_evaluate(tiny_run, synthetic_cache, tmp_path, capsys):
    run_dir, _ = tiny_run
    out = tmp_path / "cli.json"
    code = cli_main(["evaluate", "--run", str(run_dir), "--data", str(synthetic_cache), "--split", "val",
                     "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    result = json.loads(out.read_text())
    assert result["split"] == "val" and "tta_accuracy" not in result
    assert f"{100 * result['accuracy']:.2f}%" in printed and "confusion matrix" in printed
    assert out.with_suffix(".npz").is_file()
    # Errors: one line, exit status 2.
    code = cli_main(["evaluate", "--run", str(tmp_path / "nowhere"), "--data", str(synthetic_cache)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "does not exist" in err and err.count("\n") == 1
    code = cli_main(["evaluate", "--run", str(run_dir), "--data", str(synthetic_cache), "--split", "dev"])
    assert code == 2 and "unknown split" in capsys.readouterr().err


def finished_run(run_dir, seed, seconds):
    """A run folder of :func:`make_run` with the history and best epoch a finished training writes."""
    run_dir, _ = make_run(run_dir, seed=seed)
    history = [{"epoch": epoch, "loss": 1.0, "train_acc": 0.5, "val_acc": 0.4 + epoch / 100, "seconds": s}
               for epoch, s in enumerate(seconds, 1)]
    (run_dir / "history.json").write_text(json.dumps(history))
    (run_dir / "best.json").write_text(json.dumps({"epoch": len(seconds), "val_acc": history[-1]["val_acc"]}))
    return run_dir


def test_results_table_of_evaluated_runs(synthetic_cache, tmp_path, capsys):
    runs = [finished_run(tmp_path / f"run-s{seed}", seed, [62.5, 63.75]) for seed in (0, 1)]
    with pytest.raises(FERError, match="eval-test.json is missing: evaluate the run first.*--tta"):
        ev.run_results(runs[0])
    results = [ev.evaluate_run(r, synthetic_cache, split="test", tta=True) for r in runs]
    rows = [ev.run_results(r) for r in runs]
    for row, result, seed in zip(rows, results, (0, 1)):
        assert row["seed"] == seed and row["mode"] == "crossentropy" and row["epochs"] == "2 (2)"
        assert row["seconds"] == 126.25 and row["training_time"] == "2 min 06 s"
        assert row["val_acc"] == pytest.approx(0.42)
        for key in ("accuracy", "tta_accuracy", "top2_accuracy", "tta_top2_accuracy", "kl", "tta_kl", "ece",
                    "tta_ece"):
            assert row[key] == result[key], key
    table = ev.format_results_table(rows).splitlines()
    assert len(table) == 6 and table[0].startswith("| run | model, input |")
    cells = table[2].strip("| ").split(" | ")
    r = results[0]
    assert cells[:7] == [str(runs[0]), "`vgg13_small`, 64x64", "crossentropy", "0", "2 (2)", "2 min 06 s",
                         "42.00%"]
    assert cells[7:] == [f"**{100 * r['accuracy']:.2f}%**", f"{100 * r['tta_accuracy']:.2f}%",
                         f"{100 * r['top2_accuracy']:.2f}% ({100 * r['tta_top2_accuracy']:.2f}%)",
                         f"{r['kl']:.3f} ({r['tta_kl']:.3f})", f"{r['ece']:.3f} ({r['tta_ece']:.3f})"]
    # Two runs of one scheme: their spread.
    low, high = sorted(100 * result["accuracy"] for result in results)
    assert table[-1] == f"crossentropy, 2 runs: test accuracy {low:.2f}-{high:.2f}% (mean {(low + high) / 2:.2f}%)"
    # The command prints the same; errors are one line and exit status 2.
    assert cli_main(["results"] + [str(r) for r in runs]) == 0
    assert capsys.readouterr().out.splitlines() == table
    assert cli_main(["results", str(runs[0]), "--split", "val"]) == 2
    assert "eval-val.json is missing" in capsys.readouterr().err
    (runs[1] / "history.json").write_text("[]")
    assert cli_main(["results", str(runs[1])]) == 2
    assert "holds no epoch" in capsys.readouterr().err


# --------------------------------------------------------------------------- notebook 04


@pytest.mark.slow
def test_notebook_04_runs_headless_in_quick_mode(tmp_path):
    papermill = pytest.importorskip("papermill")
    notebook = REPO / "notebooks" / "04_evaluation.ipynb"
    source = json.loads(notebook.read_text())
    assert source["metadata"]["kernelspec"]["name"] == "python3"
    assert all(not cell.get("outputs") and cell.get("execution_count") is None
               for cell in source["cells"] if cell["cell_type"] == "code"), "commit the notebook without outputs"
    assert any("parameters" in cell.get("metadata", {}).get("tags", []) for cell in source["cells"])
    executed = tmp_path / "04_executed.ipynb"
    env_before = dict(os.environ)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    try:
        papermill.execute_notebook(str(notebook), str(executed), cwd=str(tmp_path), kernel_name="python3",
                                   parameters={"QUICK": True, "WORK_DIR": str(tmp_path / "work")},
                                   progress_bar=False, stdout_file=sys.stdout)
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    result = json.loads((tmp_path / "work" / "eval-test.json").read_text())
    assert {"accuracy", "tta_accuracy", "kl", "ece"} <= set(result)
    out = json.loads(executed.read_text())
    images = sum("image/png" in o.get("data", {}) for c in out["cells"] for o in c.get("outputs", []))
    assert images >= 6  # the pictures were drawn
