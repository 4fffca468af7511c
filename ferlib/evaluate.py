"""Judging a trained FER+ network on a split: every figure, written to JSON, and the report.

:func:`evaluate_run` loads the best network of a run folder, predicts a split of a prepared cache
(:mod:`ferlib.predict`, with test-time augmentation if asked), computes every figure
(:mod:`ferlib.metrics`) and writes them to JSON plus the probabilities to an ``.npz`` beside it;
:func:`format_result` is the report; ``python -m ferlib evaluate`` is the command-line form.
Saliency maps are :mod:`ferlib.saliency`; the pictures, :mod:`ferlib.plots`.

The metrics, the prediction and Grad-CAM are importable from here too, as they were before they
had modules of their own.
"""
import json
import time
import zipfile
from pathlib import Path

import numpy as np

from . import data as fer_data
from . import run
from .errors import FERError
from .fileio import atomic_write_json
from .labels import EMOTIONS
from .metrics import (ECE_BINS, LOG_EPSILON, accuracy, calibration, compute_metrics,  # noqa: F401
                      confusion_matrix, cross_entropy, crowd_entropy, expected_calibration_error,
                      kl_divergence, normalize_rows, per_class_metrics, predicted_classes, top_k_accuracy)
from .model import load_run, saliency_split  # noqa: F401
from .predict import (PLAIN_VIEWS, TTA_VIEWS, Predictions, View, load_predictions,  # noqa: F401
                      predict_probabilities, predict_split, view_inputs)
from .saliency import class_activation_gradients, grad_cam, grad_cam_faces  # noqa: F401
from .transforms import normalization_of
from .utils import as_contexts

TTA_KEYS = ("accuracy", "top2_accuracy", "per_class", "macro_f1", "mean_recall", "confusion_matrix",
            "confusion_matrix_normalized", "ece", "reliability", "kl", "cross_entropy", "crowd_agreement",
            "crowd_ece", "crowd_reliability")


def evaluate_predictions(predictions, tta=None):
    """Metrics of stored :class:`Predictions` (plain, plus ``tta_*`` when several views exist)."""
    result = predictions.metrics()
    if tta is None:
        tta = len(predictions.views) > 1
    if tta:
        tta_metrics = predictions.metrics(predictions.tta_probabilities)
        result.update({f"tta_{key}": tta_metrics[key] for key in TTA_KEYS if key in tta_metrics})
    return result


def default_json_path(run_dir, split):
    """Where :func:`evaluate_run` writes by default: ``run_dir/eval-<split>.json``; for the pretrained
    run, which is part of ferlib and never written to, ``pretrained-eval-<split>.json`` here."""
    if run.is_pretrained(run_dir):
        return Path(f"{run.PRETRAINED}-eval-{split}.json")
    return Path(run_dir) / f"eval-{split}.json"


#: Keys that mark a JSON file as a result of :func:`evaluate_run`.
_RESULT_KEYS = {"run", "split", "views", "accuracy", "predictions"}
#: Arrays that mark an ``.npz`` file as stored :class:`Predictions`.
_PREDICTION_KEYS = {"view_probabilities", "majority_keep", "crowd_keep"}


def check_json_path(run_dir, json_path):
    """Refuse a ``json_path`` whose JSON or ``.npz`` would replace a file of the training run."""
    from .train import is_run_file  # the run folder's contract lives with training

    run_dir, json_path = Path(run_dir), Path(json_path)
    if json_path.is_dir():  # checked first: the .npz beside it would be written before the JSON fails
        raise FERError(f"--json {json_path} is a folder; give the name of the JSON file to write")
    for path in (json_path, json_path.with_suffix(".npz")):
        if path.resolve().parent == run_dir.resolve() and is_run_file(path.name):
            raise FERError(f"--json {json_path} would replace {path.name}, a file of the training run in "
                           f"{run_dir}; choose another name, e.g. {default_json_path(run_dir, 'test').name}")
    return json_path


def evaluation_outputs(run_dir):
    """The files :func:`evaluate_run` wrote into ``run_dir``: its JSON results, their ``.npz``
    and the temporary files of interrupted writes (what ``train --overwrite`` removes)."""
    from .train import is_run_file

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = set()
    for path in run_dir.iterdir():
        name = path.name
        if not path.is_file() or is_run_file(name):
            continue
        if (name.startswith("eval-") and path.suffix in (".json", ".npz")) or _is_result_file(path):
            found.add(path)
        elif name.startswith(".eval-") and name.endswith(".tmp"):
            found.add(path)
    return sorted(found)


def _is_result_file(path):
    """True for a JSON result or stored predictions of :func:`evaluate_run`, whatever its name."""
    try:
        if path.suffix == ".json":
            content = json.loads(path.read_text(encoding="utf-8"))
            return isinstance(content, dict) and _RESULT_KEYS <= set(content)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return _PREDICTION_KEYS <= set(z.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False  # not readable as one: not ours
    return False


def evaluate_run(run_dir, data_dir, split="test", tta=False, ctx=None, json_path=None, batch_size=256,
                 save=True, progress=False):
    """Evaluate the best network of a training run on a split of a prepared cache.

    Parameters
    ----------
    run_dir : str or Path
        A run folder (``config.json`` + ``best.params``, see :func:`ferlib.model.load_run`).
    data_dir : str, Path or FERPlusData
        A prepared cache (``python -m ferlib prepare``) or the loaded data.
    split : ``train``, ``val`` or ``test``
    tta : bool
        Also evaluate with test-time augmentation (:data:`TTA_VIEWS`); the
        figures appear again with a ``tta_`` prefix.
    ctx : Context or list of Context, default cpu
    json_path : str or Path, optional
        Where to write the result; default ``run_dir/eval-<split>.json``. The
        probabilities go to the same name with ``.npz``. A path that would
        replace a file of the training run (``config.json``, ``best.params``...)
        is refused.
    save : bool
        Write the JSON and the ``.npz`` (``False``: only return the dict).

    Returns
    -------
    dict (JSON-ready)
        The keys of :func:`compute_metrics` (``accuracy``, ``top2_accuracy``,
        ``per_class``, ``confusion_matrix``, ``kl``, ``cross_entropy``,
        ``ece``, ...), the ``tta_*`` versions when asked, and ``run``,
        ``data``, ``split``, ``model``, ``mode``, ``views``, ``seconds``,
        ``json`` and ``predictions`` (paths, or None when not saved).
    """
    fer_data.check_split(split)  # fail before any loading
    json_path = Path(json_path) if json_path else default_json_path(run_dir, split)
    run_name, run_dir = str(run_dir), run.locate(run_dir)
    if save:
        check_json_path(run_dir, json_path)
    data = data_dir if isinstance(data_dir, fer_data.FERPlusData) else fer_data.load_cache(data_dir)
    net, config = load_run(run_dir, ctx=as_contexts(ctx))
    net.hybridize(static_alloc=True)
    size, normalization = int(config["input_size"]), normalization_of(config)
    started = time.perf_counter()
    predictions = predict_split(net, data, split, size, tta=tta, batch_size=batch_size, ctx=ctx, progress=progress,
                                normalization=normalization)
    seconds = time.perf_counter() - started
    predictions.meta.update({"run": run_name, "model": config["model"]})
    result = {
        "run": run_name,
        "data": (data.source.get("cache") or "FERPlusData in memory") if data_dir is data else str(data_dir),
        "split": split,
        "model": config["model"],
        "mode": config.get("mode"),
        "input_size": size,
        "normalization": normalization,
        "tta": bool(tta),
        "views": predictions.views,
        "seconds": round(seconds, 3),
        "images_per_sec": round(len(predictions.rows) * len(predictions.views) / max(seconds, 1e-9), 1),
    }
    result.update(evaluate_predictions(predictions, tta=tta))
    result["json"] = result["predictions"] = None
    if save:
        npz_path = json_path.with_suffix(".npz")
        predictions.save(npz_path)
        result["json"], result["predictions"] = str(json_path), str(npz_path)
        atomic_write_json(json_path, result)
    return result


def format_result(result):
    """A readable text table of an :func:`evaluate_run` result."""
    has_tta = "tta_accuracy" in result
    lines = [f"run {result.get('run', '?')} ({result.get('model', '?')}, trained in {result.get('mode', '?')} "
             f"mode), split {result.get('split', '?')}: {result['num_faces']} faces with a majority label, "
             f"{result.get('num_crowd_faces', 0)} in crossentropy mode"]
    header = f"  {'':30s}{'plain':>10s}" + (f"{'TTA':>10s}" if has_tta else "")
    lines += ["", header]

    def row(label, key, percent):
        def fmt(value):
            return f"{100 * value:9.2f}%" if percent else f"{value:10.4f}"
        text = f"  {label:30s}{fmt(result[key])}"
        if has_tta and f"tta_{key}" in result:
            text += fmt(result[f"tta_{key}"])
        return text

    lines.append(row("accuracy (majority label)", "accuracy", True))
    lines.append(row("top-2 accuracy", "top2_accuracy", True))
    lines.append(row("mean class recall", "mean_recall", True))
    lines.append(row("macro F1", "macro_f1", False))
    lines.append(row(f"ECE ({result['reliability']['num_bins']} bins)", "ece", False))
    if "kl" in result:
        lines.append(row("KL(crowd || prediction), nats", "kl", False))
        lines.append(row("cross-entropy vs crowd, nats", "cross_entropy", False))
        lines.append(f"  {'  (crowd entropy, its floor)':30s}{result['crowd_entropy']:10.4f}")
        lines.append(row("crowd agreement", "crowd_agreement", True))
        lines.append(row("crowd ECE", "crowd_ece", False))
    width = max(len(e) for e in EMOTIONS)
    lines += ["", f"  {'':{width}s}  precision  recall      F1  support"]
    for emotion, m in result["per_class"].items():
        lines.append(f"  {emotion:{width}s}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:6.3f}  "
                     f"{m['support']:7d}")
    lines += ["", "  confusion matrix (rows: majority label, columns: prediction)",
              f"  {'':{width}s}" + "".join(f"{e[:7]:>8s}" for e in EMOTIONS)]
    for emotion, counts in zip(EMOTIONS, result["confusion_matrix"]):
        lines.append(f"  {emotion:{width}s}" + "".join(f"{c:8d}" for c in counts))
    if result.get("json"):
        lines += ["", f"  wrote {result['json']} and {result['predictions']}"]
    return "\n".join(lines)


#: Columns of :func:`format_results_table`: heading, and the key of :func:`run_results` it shows
#: (a pair of keys: plain, then TTA in brackets).
RESULTS_COLUMNS = (
    ("run", "run"), ("model, input", "network"), ("training labels", "mode"), ("seed", "seed"),
    ("epochs (best)", "epochs"), ("training time", "training_time"), ("val acc", "val_acc"),
    ("**test acc**", "accuracy"), ("test acc, TTA", "tta_accuracy"),
    ("top-2 (TTA)", ("top2_accuracy", "tta_top2_accuracy")), ("KL to crowd (TTA)", ("kl", "tta_kl")),
    ("ECE (TTA)", ("ece", "tta_ece")),
)


#: The figures of an evaluation that :func:`run_results` takes, each also with TTA (``tta_`` + name).
RESULTS_FIGURES = ("accuracy", "top2_accuracy", "kl", "ece")


def results_json_path(run_dir, split="test"):
    """The evaluation of a run that :func:`run_results` reads: where ``evaluate`` writes by default
    (:func:`default_json_path`), and for ``pretrained`` the test evaluation shipped with it."""
    if run.is_pretrained(run_dir) and split == "test":
        return run.locate(run_dir) / run.PRETRAINED_EVALUATION
    return default_json_path(run_dir, split)


def run_results(run_dir, split="test"):
    """One run's row of a results table: its settings (``config.json``), its training (``history.json``:
    epochs and their summed time, validation included; ``best.json``: the kept epoch and its validation
    accuracy) and its evaluation on ``split`` (:func:`results_json_path`, written by ``evaluate``)."""
    folder = run.locate(run_dir)
    config = run.read_config(run_dir, required=("model", "mode", "input_size"))
    history, best = run.read_json(folder / run.HISTORY_JSON), run.read_json(folder / run.BEST_JSON)
    path = results_json_path(run_dir, split)
    if not path.is_file():
        raise FERError(f"{path} is missing: evaluate the run first (python -m ferlib evaluate --run {run_dir} "
                       f"--data CACHE --split {split} --tta)")
    evaluation = run.read_json(path)
    if evaluation.get("split") != split:
        raise FERError(f"{path} is an evaluation of the {evaluation.get('split')!r} split, not of {split!r}")
    if not history or not isinstance(history, list):
        raise FERError(f"{folder / run.HISTORY_JSON} holds no epoch: the run has not finished one")
    row = {"run": str(run_dir), "model": config["model"], "input_size": config["input_size"],
           "network": f"`{config['model']}`, {config['input_size']}x{config['input_size']}",
           "mode": config["mode"], "seed": config.get("seed"), "num_epochs": len(history),
           "best_epoch": best.get("epoch"), "seconds": float(sum(record["seconds"] for record in history)),
           "val_acc": best.get("val_acc")}
    row["epochs"] = f"{row['num_epochs']} ({row['best_epoch']})"
    minutes, seconds = divmod(round(row["seconds"]), 60)
    row["training_time"] = f"{minutes} min {seconds:02d} s"
    for key in RESULTS_FIGURES:  # plain and TTA, as evaluate_run names them
        row[key], row[f"tta_{key}"] = evaluation.get(key), evaluation.get(f"tta_{key}")
    return row


def _results_cell(row, key):
    def fmt(name):
        value = row.get(name)
        if value is None:
            return "-"
        if isinstance(value, (str, int)):
            return str(value)
        return f"{100 * value:.2f}%" if name.endswith("acc") or name.endswith("accuracy") else f"{value:.3f}"
    if isinstance(key, tuple):
        return f"{fmt(key[0])} ({fmt(key[1])})"
    cell = fmt(key)
    return f"**{cell}**" if key == "accuracy" else cell


def format_results_table(rows):
    """A Markdown table of :func:`run_results` rows (the README's results tables are printed so), and
    below it, for each training scheme with several runs, the spread of their test accuracy."""
    lines = ["| " + " | ".join(heading for heading, _ in RESULTS_COLUMNS) + " |",
             "|" + " --- |" * len(RESULTS_COLUMNS)]
    lines += ["| " + " | ".join(_results_cell(row, key) for _, key in RESULTS_COLUMNS) + " |" for row in rows]
    modes = {}
    for row in rows:
        modes.setdefault(row["mode"], []).append(row)
    for mode, runs in modes.items():
        if len(runs) > 1:
            plain = [100 * r["accuracy"] for r in runs]
            lines.append(f"\n{mode}, {len(runs)} runs: test accuracy {min(plain):.2f}-{max(plain):.2f}% "
                         f"(mean {np.mean(plain):.2f}%)")
    return "\n".join(lines)


def _results_command(args):
    print(format_results_table([run_results(run_dir, args.split) for run_dir in args.runs]))
    return 0


def add_commands(subparsers):
    p = subparsers.add_parser(
        "evaluate", help="test metrics of a training run: accuracy, F1, confusion, crowd KL, ECE, TTA",
        description="Evaluate the best network of a run folder on a split of a prepared cache. Prints a "
                    "table and writes every figure to JSON and the probabilities to an .npz beside it.")
    p.add_argument("--run", required=True, help="run folder (config.json + best.params), e.g. runs/NAME, "
                                                "or 'pretrained' for ferlib's own weights")
    p.add_argument("--data", required=True, help="prepared cache folder (python -m ferlib prepare)")
    p.add_argument("--split", default="test", help="train, val or test (default test)")
    p.add_argument("--tta", action="store_true", help="also with test-time augmentation (flip + shifted crops)")
    p.add_argument("--json", default=None, help="output JSON (default RUN/eval-SPLIT.json)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--gpus", default=None, help="GPU ids such as 0 or 0,1, or 'cpu' (default: as train, "
                                                "every GPU MXNet can use, else the CPU)")
    p.set_defaults(func=_evaluate_command)

    p = subparsers.add_parser(
        "results", help="a Markdown table of evaluated runs (the README's results tables)",
        description="One row per run folder, from its config, history, best epoch and eval-SPLIT.json "
                    "(python -m ferlib evaluate --tta writes it): test accuracy plain and with TTA, top-2, "
                    "KL to the crowd, ECE, epochs and the summed time of the epochs.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders, or 'pretrained'")
    p.add_argument("--split", default="test", help="the evaluated split whose figures to show (default test)")
    p.set_defaults(func=_results_command)


def _evaluate_command(args):
    from .utils import parse_devices

    if args.batch_size < 1:
        raise FERError(f"--batch-size must be at least 1, got {args.batch_size}")
    result = evaluate_run(args.run, args.data, split=args.split, tta=args.tta, ctx=parse_devices(args.gpus),
                          json_path=args.json, batch_size=args.batch_size)
    print(format_result(result))
    return 0
