"""The run folder: the one place that names its files, reads its settings and loads its network.

A training run folder (``python -m ferlib train --out RUN``) holds::

    config.json            the settings: model, model_kwargs, input_size, emotions, the recipe
    labels.json            the emotions, in the order of the network's outputs
    history.json/.csv      one record per epoch
    best.json              the best validation epoch; best.params, its weights
    checkpoint.json        the last epoch, committing checkpoint.params and .states (for --resume)
    model-symbol.json      the best network, exported as a graph, and model-0000.params its
                           weights: what evaluation, the ONNX export and the model server load
    train.lock             held while a training runs in the folder

A model archive (``.mar``) holds the exported network, ``labels.json`` and ``serving.json``.

One run folder ships inside ferlib: the name ``pretrained`` (:data:`PRETRAINED`), given wherever a
run folder is accepted, means it (:func:`locate`). It holds the exported network that the README's
results table marks as shipped, trained on the real FER+ data, its settings, history and test evaluation, and ``SHA256SUMS``, which
is checked before it is used.

Standard library only (MXNet is imported when a network is loaded): the model archive carries
this module (and :mod:`ferlib.fileio`) for its handler.
"""
import functools
import json
import warnings
from pathlib import Path

from .errors import FERError
from .fileio import file_sha256

CONFIG, LABELS = "config.json", "labels.json"
HISTORY_JSON, HISTORY_CSV = "history.json", "history.csv"
BEST_JSON, BEST_PARAMS = "best.json", "best.params"
CHECKPOINT_JSON, CHECKPOINT_PARAMS, CHECKPOINT_STATES = "checkpoint.json", "checkpoint.params", "checkpoint.states"
LOCK = "train.lock"
#: The exported network: MXNet's ``export(prefix)`` names its two files after the prefix.
EXPORT_PREFIX = "model"
EXPORT_SYMBOL, EXPORT_PARAMS = f"{EXPORT_PREFIX}-symbol.json", f"{EXPORT_PREFIX}-0000.params"
#: The serving settings of a model archive (input size, detector, limits).
SERVING = "serving.json"
#: The run folder that ships with ferlib, by name (``--run pretrained``), and where it is.
PRETRAINED = "pretrained"
PRETRAINED_DIR = Path(__file__).resolve().parent / PRETRAINED
#: The pretrained folder's list of files and their SHA-256, in ``sha256sum`` format.
CHECKSUMS = "SHA256SUMS"
#: Every file a training run writes into its folder.
TRAINING_FILES = (CONFIG, HISTORY_JSON, HISTORY_CSV, BEST_PARAMS, BEST_JSON, LABELS, CHECKPOINT_PARAMS,
                  CHECKPOINT_STATES, CHECKPOINT_JSON, EXPORT_SYMBOL, EXPORT_PARAMS, LOCK)


def is_pretrained(run_dir):
    """True when ``run_dir`` names the run folder that ships with ferlib."""
    return str(run_dir) == PRETRAINED


def locate(run_dir):
    """The folder of a run: ``run_dir`` itself, or for ``"pretrained"`` the copy inside ferlib,
    after checking every file of it against ``SHA256SUMS`` (a local folder named so: ``./pretrained``)."""
    if not is_pretrained(run_dir):
        return Path(run_dir)
    _check_pretrained(PRETRAINED_DIR)
    return PRETRAINED_DIR


@functools.lru_cache(maxsize=None)
def _check_pretrained(folder):
    listing = folder / CHECKSUMS
    if not listing.is_file():
        raise FERError(f"ferlib's pretrained run is missing ({listing} not found): this ferlib was installed "
                       "without it; reinstall ferlib from its repository")
    for line in listing.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        path = folder / name.lstrip("*")
        if not path.is_file():
            raise FERError(f"ferlib's pretrained run is incomplete: {path} is missing; reinstall ferlib")
        if file_sha256(path) != digest:
            raise FERError(f"{path} does not match its checksum in {listing} (changed or damaged); "
                           "reinstall ferlib")
    return True


#: The run files the pretrained folder holds: no training state, no best.params
#: (:func:`ferlib.model.load_run` reads the exported weights)...
PRETRAINED_FILES = (CONFIG, LABELS, HISTORY_JSON, BEST_JSON, EXPORT_SYMBOL, EXPORT_PARAMS)
#: ...and its test evaluation (``python -m ferlib evaluate --split test``), besides SHA256SUMS.
PRETRAINED_EVALUATION = "eval-test.json"


def ship_pretrained(run_dir, eval_json, dest=None):
    """Make ``run_dir`` ferlib's pretrained run (a maintainer's step): copy its :data:`PRETRAINED_FILES`,
    with ``eval_json`` (``evaluate --split test``) as :data:`PRETRAINED_EVALUATION`, into ``dest`` (default
    :data:`PRETRAINED_DIR`, replaced), and seal them with :func:`write_checksums`."""
    import shutil

    run_dir, dest = Path(run_dir), Path(dest or PRETRAINED_DIR)
    evaluation = read_json(eval_json)
    if evaluation.get("split") != "test":
        raise FERError(f"{eval_json} is an evaluation of the {evaluation.get('split')!r} split, not of 'test'")
    evaluation.update({"run": PRETRAINED, "json": PRETRAINED_EVALUATION, "predictions": None})
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in PRETRAINED_FILES:
        if not (run_dir / name).is_file():
            raise FERError(f"{run_dir / name} is missing: {run_dir} is not a finished, exported run")
        shutil.copyfile(run_dir / name, dest / name)
    (dest / PRETRAINED_EVALUATION).write_text(json.dumps(evaluation, indent=1) + "\n", encoding="utf-8")
    write_checksums(dest)
    return dest


def write_checksums(folder):
    """Write ``SHA256SUMS`` listing every other file of ``folder`` (how the pretrained run is sealed)."""
    folder = Path(folder)
    lines = [f"{file_sha256(path)}  {path.name}" for path in sorted(folder.iterdir())
             if path.is_file() and path.name != CHECKSUMS]
    (folder / CHECKSUMS).write_text("\n".join(lines) + "\n", encoding="utf-8")
    _check_pretrained.cache_clear()


def read_json(path):
    """The JSON content of ``path``; a missing or unreadable file is a FERError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FERError(f"{path} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise FERError(f"{path} is not valid JSON: {err}") from None


def read_config(run_dir, required=("input_size",)):
    """``config.json`` of a run folder, checked to be a JSON object with the ``required`` keys."""
    run_dir = locate(run_dir)
    if not run_dir.is_dir():
        raise FERError(f"run folder {run_dir} does not exist (train a model first, or check the path)")
    path = run_dir / CONFIG
    if not path.is_file():
        raise FERError(f"{path} is missing: {run_dir} is not a complete training run folder")
    config = read_json(path)
    if not isinstance(config, dict):
        raise FERError(f"{path} must hold a JSON object")
    missing = [key for key in required if key not in config]
    if missing:
        raise FERError(f"{path} lacks the key(s) {', '.join(missing)}")
    return config


def load_exported(model_dir, ctx=None):
    """The exported network of a run folder or an unpacked archive, as a ``SymbolBlock``
    (one input, ``data``). No model code is needed to load it."""
    import mxnet as mx

    model_dir = locate(model_dir)
    symbol, params = model_dir / EXPORT_SYMBOL, model_dir / EXPORT_PARAMS
    for path in (symbol, params):
        if not path.is_file():
            raise FERError(f"{path} is missing: the network was not exported (training exports the best "
                           "epoch; or ferlib.model.export_net)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SymbolBlock warns that its input has no parameter
        return mx.gluon.nn.SymbolBlock.imports(str(symbol), ["data"], str(params), ctx=ctx or mx.cpu())
