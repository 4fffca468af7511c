"""Devices and small helpers shared by every stage (d2l style)."""
import json
import os
import tempfile
from pathlib import Path

import mxnet as mx

from .errors import FERError


def num_gpus():
    """Number of GPUs MXNet can use (0 on a CPU build or a machine without GPU)."""
    try:
        return mx.context.num_gpus()
    except mx.base.MXNetError:
        return 0


def try_gpu(i=0):
    """Return ``mx.gpu(i)`` if that GPU exists, else ``mx.cpu()``."""
    return mx.gpu(i) if num_gpus() >= i + 1 else mx.cpu()


def try_all_gpus():
    """Return all GPUs, or ``[mx.cpu()]`` when there are none."""
    return [mx.gpu(i) for i in range(num_gpus())] or [mx.cpu()]


def parse_devices(spec):
    """Contexts from a ``--gpus``-style string.

    ``""``/``None`` -> all GPUs, or the CPU when there are none; ``"cpu"`` -> CPU;
    ``"0,1"`` -> those GPUs (a missing id is an error that says what exists);
    ``"cpu:2"`` -> two CPU contexts, which exercise the multi-device code
    path on a machine without GPU.
    """
    if spec is None or str(spec).strip() in ("", "auto"):
        return try_all_gpus()
    spec = str(spec).strip().lower()
    if spec == "cpu":
        return [mx.cpu()]
    if spec.startswith("cpu:"):
        try:
            count = int(spec[4:])
        except ValueError:
            count = 0
        if count < 1:
            raise FERError(f"--gpus {spec!r}: after 'cpu:' give how many CPU contexts, e.g. cpu:2")
        return [mx.cpu(i) for i in range(count)]
    available = num_gpus()
    try:
        ids = [int(part) for part in spec.split(",") if part.strip() != ""]
    except ValueError:
        raise FERError(f"--gpus {spec!r}: give GPU ids such as 0 or 0,1, or 'cpu'") from None
    missing = [i for i in ids if i < 0 or i >= available]
    if missing:
        have = f"GPUs 0..{available - 1}" if available else "no GPU (use --gpus cpu)"
        raise FERError(f"--gpus {spec!r}: GPU {missing[0]} does not exist; this machine has {have}")
    return [mx.gpu(i) for i in ids]


def as_contexts(ctx=None):
    """A list of contexts from ``None`` (the CPU), one context, or a list of them."""
    if ctx is None:
        return [mx.cpu()]
    return list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]


def describe_devices(ctx):
    """Short human text for a list of contexts, e.g. 'gpu(0), gpu(1)'."""
    return ", ".join(str(c) for c in ctx)


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` so that a crash never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path, obj):
    """JSON version of :func:`atomic_write_bytes` (indented, UTF-8)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def atomic_save(path, save_fn):
    """Call ``save_fn(tmp_path)`` (e.g. ``net.save_parameters``) and move it into place atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
