"""Export a trained network to ONNX, and check the export with ONNX Runtime.

``python -m ferlib export --run runs/NAME --onnx fer.onnx`` converts the run's
exported MXNet graph (``model-symbol.json`` + ``model-0000.params``) with
MXNet's own exporter (:func:`mxnet.onnx.export_model`), with a free batch
dimension, then runs a batch of real preprocessed faces through both MXNet
and ONNX Runtime: the top class must agree on every face and every
probability within 1e-4 (:func:`check_onnx`).

The ONNX model has one input ``data`` of shape ``(N, 1, S, S)`` (the output
of :func:`ferlib.transforms.preprocess`) and one output: the 8 logits in the
order of :data:`ferlib.labels.EMOTIONS`; apply a softmax for probabilities.

Needs ``onnx`` (any version from 1.16: :func:`_mxnet_exporter_compat` gives MXNet
1.9.1's exporter what later versions removed) and ``onnxruntime`` for the check.
"""
import contextlib
import json
import os
import sys
import types
import warnings
from pathlib import Path

import numpy as np

from .errors import FERError
from .labels import EMOTIONS
from . import run
from .model import load_exported
from .transforms import DEFAULT_NORMALIZATION, normalization_of, preprocess

import mxnet as mx  # noqa: E402  (ferlib's package __init__ has run first)

#: Largest allowed difference between MXNet's and ONNX Runtime's probabilities.
PROBABILITY_TOLERANCE = 1e-4


#: The ONNX opset written. MXNet 1.9.1's converters exist for opsets 12 and 13 only; left alone
#: it would label the graph with the newest opset the installed onnx knows, which it is not.
ONNX_OPSET = 13


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise FERError("ONNX export needs the onnx package: pip install onnx onnxruntime") from None
    return onnx


@contextlib.contextmanager
def _mxnet_exporter_compat(onnx):
    """What MXNet 1.9.1's exporter needs from the onnx of today, for the duration of one export:
    ``onnx.mapping`` (removed in onnx 1.17; the exporter reads two of its tables) and the opset
    number it writes (:data:`ONNX_OPSET`)."""
    from onnx import TensorProto

    names = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
             "float16", "float32", "float64", "complex64", "complex128")
    onnx_names = ("BOOL", "INT8", "UINT8", "INT16", "UINT16", "INT32", "UINT32", "INT64", "UINT64",
                  "FLOAT16", "FLOAT", "DOUBLE", "COMPLEX64", "COMPLEX128")
    to_tensor = {np.dtype(n): getattr(TensorProto, o) for n, o in zip(names, onnx_names)}
    added_mapping = not hasattr(onnx, "mapping")
    if added_mapping:
        onnx.mapping = types.SimpleNamespace(NP_TYPE_TO_TENSOR_TYPE=to_tensor,
                                             TENSOR_TYPE_TO_NP_TYPE={v: k for k, v in to_tensor.items()})
        sys.modules["onnx.mapping"] = onnx.mapping
    newest_opset = onnx.defs.onnx_opset_version
    onnx.defs.onnx_opset_version = lambda: ONNX_OPSET
    try:
        yield
    finally:
        onnx.defs.onnx_opset_version = newest_opset
        if added_mapping:
            del onnx.mapping
            sys.modules.pop("onnx.mapping", None)


def _run_input(run_dir):
    """The run's input size and normalisation, from one read of its config."""
    config = run.read_config(run_dir)
    try:
        return int(config["input_size"]), normalization_of(config)
    except (TypeError, ValueError) as err:
        raise FERError(f"{Path(run_dir) / run.CONFIG}: cannot read input_size ({err})") from None


def export_onnx(run_dir, onnx_path, input_size=None):
    """Convert a run's exported network to an ONNX file with a dynamic batch size.

    Parameters
    ----------
    run_dir : str or Path
        Run folder with ``model-symbol.json``, ``model-0000.params`` and ``config.json``.
    onnx_path : str or Path
        File to write.
    input_size : int, optional
        Default: the run's ``input_size``.

    Returns
    -------
    Path of the ONNX file.
    """
    onnx = _import_onnx()
    run_dir, onnx_path = run.locate(run_dir), Path(onnx_path)
    for name in (run.EXPORT_SYMBOL, run.EXPORT_PARAMS):
        if not (run_dir / name).is_file():
            raise FERError(f"{run_dir / name} is missing: the run has no exported network")
    size = input_size or _run_input(run_dir)[0]
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = onnx_path.with_name(f".{onnx_path.name}.tmp")
    with warnings.catch_warnings(), _mxnet_exporter_compat(onnx):
        warnings.simplefilter("ignore")  # the exporter warns about its own internals
        mx.onnx.export_model(str(run_dir / run.EXPORT_SYMBOL), str(run_dir / run.EXPORT_PARAMS),
                             in_shapes=[(1, 1, size, size)], in_types=[np.float32],
                             onnx_file_path=str(tmp_path), dynamic=True,
                             dynamic_input_shapes=[(None, 1, size, size)])
    model = onnx.load(str(tmp_path))
    # MXNet lists the weights as graph inputs too; ONNX Runtime then treats them as
    # overridable inputs and will not fold constants. Keep only the real input.
    weights = {init.name for init in model.graph.initializer}
    real_inputs = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(real_inputs)
    model.doc_string = f"FER+ emotions {', '.join(EMOTIONS)}: logits of input data (N, 1, {size}, {size})"
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path))
    os.replace(tmp_path, onnx_path)
    return onnx_path


def sample_batch(input_size, n=16, seed=0, data=None, normalization=DEFAULT_NORMALIZATION):
    """A batch of preprocessed faces to compare runtimes on.

    ``data`` may be a prepared cache folder or a FERPlusData (its test faces
    are used); default synthetic faces from :mod:`ferlib.synth`. ``normalization``:
    the run's, so that the batch is what the network sees in use.
    """
    if data is not None:
        from .data import FERPlusData, load_cache

        data = data if isinstance(data, FERPlusData) else load_cache(data)
        rows = data.split_indices("test")[:n]
        images = data.images[rows]
    else:
        from .synth import make_faces

        images = make_faces(n, seed).images
    return preprocess(images, size=input_size, normalization=normalization)


def check_onnx(run_dir, onnx_path, batch=None, tolerance=PROBABILITY_TOLERANCE):
    """Run ``batch`` through MXNet and ONNX Runtime and compare.

    Returns
    -------
    dict
        ``max_abs_diff`` of the probabilities, ``same_top_class`` (bool),
        ``batch_size``; raises FERError when either check fails.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise FERError("checking the ONNX file needs onnxruntime: pip install onnxruntime") from None
    size, normalization = _run_input(run_dir)
    batch = np.asarray(sample_batch(size, normalization=normalization) if batch is None else batch, dtype=np.float32)
    net = load_exported(run_dir)
    mx_prob = mx.nd.softmax(net(mx.nd.array(batch))).asnumpy()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: batch})[0]
    ort_prob = mx.nd.softmax(mx.nd.array(logits)).asnumpy()
    diff = float(np.abs(mx_prob - ort_prob).max())
    same_top = bool((mx_prob.argmax(axis=1) == ort_prob.argmax(axis=1)).all())
    result = {"max_abs_diff": diff, "same_top_class": same_top, "batch_size": int(len(batch))}
    if not same_top or diff > tolerance:
        raise FERError(f"{onnx_path} disagrees with MXNet on a batch of {len(batch)}: top class the same "
                       f"everywhere: {same_top}, largest probability difference {diff:.2e} (limit {tolerance:g})")
    return result


def _export_command(args):
    path = export_onnx(args.run, args.onnx)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if not args.no_check:
        result = check_onnx(args.run, path)
        print(f"onnxruntime agrees with MXNet on {result['batch_size']} faces: same top class, "
              f"largest probability difference {result['max_abs_diff']:.1e}")
    return 0


def add_commands(subparsers):
    p = subparsers.add_parser("export", help="export a run's network to ONNX and check it with onnxruntime",
                              description="Convert the run's exported MXNet network to ONNX (dynamic batch) "
                                          "with MXNet's exporter, then compare it with onnxruntime on a batch.")
    p.add_argument("--run", required=True, help="training run folder")
    p.add_argument("--onnx", required=True, help="ONNX file to write, e.g. model_store/fer.onnx")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.set_defaults(func=_export_command)
