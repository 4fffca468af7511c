"""Devices and small helpers shared by every stage (d2l style)."""
import functools
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import mxnet as mx

from . import cuda
from .errors import FERError


def num_gpus():
    """Number of GPUs MXNet can train on here (see :func:`usable_gpus`)."""
    return len(usable_gpus())


@functools.lru_cache(maxsize=1)
def usable_gpus():
    """Ids of the GPUs MXNet can use: those it sees, less those its kernels cannot run on.

    Where the machine has a GPU that the installed MXNet cannot use (the CPU build, or a
    GPU newer than MXNet 1.9.1's kernels), prints one line saying why, once.
    """
    try:
        seen = mx.context.num_gpus()
    except mx.base.MXNetError:
        seen = 0
    status = cuda.prepared_status()
    if status.message:
        print(status.message, file=sys.stderr, flush=True)
    # nvidia-smi knows each GPU's compute capability; without it, trust MXNet's count.
    return [i for i in range(seen) if not status.gpus or i in status.usable]


def try_gpu(i=0):
    """Return ``mx.gpu(i)`` if MXNet can use that GPU, else ``mx.cpu()``."""
    return mx.gpu(i) if i in usable_gpus() else mx.cpu()


def try_all_gpus():
    """Return every GPU MXNet can use, or ``[mx.cpu()]`` when there is none."""
    return [mx.gpu(i) for i in usable_gpus()] or [mx.cpu()]


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
    available = usable_gpus()
    try:
        ids = [int(part) for part in spec.split(",") if part.strip() != ""]
    except ValueError:
        raise FERError(f"--gpus {spec!r}: give GPU ids such as 0 or 0,1, or 'cpu'") from None
    missing = [i for i in ids if i not in available]
    if missing:
        have = f"GPUs {', '.join(map(str, available))}" if available else "no GPU (use --gpus cpu)"
        raise FERError(f"--gpus {spec!r}: GPU {missing[0]} does not exist (or MXNet cannot use it); this machine has {have}")
    return [mx.gpu(i) for i in ids]


def as_contexts(ctx=None):
    """A list of contexts from ``None`` (the CPU), one context, or a list of them."""
    if ctx is None:
        return [mx.cpu()]
    return list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]


def describe_devices(ctx):
    """Short human text for a list of contexts, e.g. 'gpu(0), gpu(1)'."""
    return ", ".join(str(c) for c in ctx)


def os_reason(err):
    """Why an ``OSError`` on a path happened, in a few plain words.

    A file where a folder should be (``out/x`` when ``out`` is a file) gets
    named, since the bare ``File exists`` / ``Not a directory`` hides it.
    """
    if isinstance(err, (FileExistsError, NotADirectoryError)) and err.filename is not None:
        blocker = _file_in_the_way(err.filename)
        if blocker is not None:
            return f"{'it' if blocker == Path(err.filename) else blocker} is a file, not a folder"
    if isinstance(err, PermissionError):
        return "permission denied"
    return err.strerror or str(err)


def _file_in_the_way(path):
    """The first existing non-folder among ``path`` and its parents, from the root down."""
    path = Path(path)
    for candidate in reversed([path, *path.parents]):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return None


def ensure_dir(path):
    """Create folder ``path`` and its parents; a folder that cannot exist is a FERError naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FERError(f"cannot create the folder {path}: {os_reason(err)}") from None
    return path


def _temp_beside(path):
    """A new empty temporary file in ``path``'s folder (created if missing), closed."""
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise FERError(f"cannot write {path}: {os_reason(err)}") from None
    os.close(fd)
    return tmp


def _move_into_place(tmp, path):
    try:
        os.replace(tmp, path)
    except OSError as err:
        if isinstance(err, IsADirectoryError) or Path(path).is_dir():
            raise FERError(f"cannot write {path}: it is a folder") from None
        raise FERError(f"cannot write {path}: {os_reason(err)}") from None


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` so that a crash never leaves a partial file."""
    path = Path(path)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_save(path, write)


def atomic_write_json(path, obj):
    """JSON version of :func:`atomic_write_bytes` (indented, UTF-8)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def atomic_save(path, save_fn):
    """Call ``save_fn(tmp_path)`` (e.g. ``net.save_parameters``) and move it into place atomically.

    A folder or file that cannot be created is a :class:`FERError` naming
    ``path``; the temporary file never outlives an error.
    """
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        save_fn(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # on disk before the rename, so a power cut leaves old or new
        _move_into_place(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def file_sha256(path):
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
