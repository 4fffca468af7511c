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

Standard library only (MXNet is imported when a network is loaded): the model archive carries
this module for its handler.
"""
import json
import warnings
from pathlib import Path

from .errors import FERError

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
#: Every file a training run writes into its folder.
TRAINING_FILES = (CONFIG, HISTORY_JSON, HISTORY_CSV, BEST_PARAMS, BEST_JSON, LABELS, CHECKPOINT_PARAMS,
                  CHECKPOINT_STATES, CHECKPOINT_JSON, EXPORT_SYMBOL, EXPORT_PARAMS, LOCK)


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
    run_dir = Path(run_dir)
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

    model_dir = Path(model_dir)
    symbol, params = model_dir / EXPORT_SYMBOL, model_dir / EXPORT_PARAMS
    for path in (symbol, params):
        if not path.is_file():
            raise FERError(f"{path} is missing: the network was not exported (training exports the best "
                           "epoch; or ferlib.model.export_net)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SymbolBlock warns that its input has no parameter
        return mx.gluon.nn.SymbolBlock.imports(str(symbol), ["data"], str(params), ctx=ctx or mx.cpu())
