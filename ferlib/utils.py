"""Devices and small helpers shared by every stage (d2l style)."""
import functools
import sys

import mxnet as mx

from . import cpu, cuda
from .errors import FERError

# oneDNN has read its ISA cap now; children must not inherit it (see ferlib.cpu).
cpu.forget_amx_variable(mx)


#: Where the CPU's training step computes: ``float32``; ``bfloat16`` (the convolutions and dense
#: layers, with oneDNN's AVX-512 BF16 or AMX kernels); ``auto``: bfloat16 where it is the faster
#: (:func:`ferlib.cpu.bfloat16_is_fast`).
CPU_PRECISIONS = ("float32", "bfloat16", "auto")


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
