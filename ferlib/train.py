"""Training: the FER+ networks on one or many GPUs (or the CPU), with checkpoints.

:func:`train` runs the whole job with a :class:`Recipe` and writes a run folder
(:mod:`ferlib.run`)::

    result = train("build/cache", "runs/small-ce", "cpu", mode="crossentropy", lr=0.01)
    result["best_val_acc"], result["best_epoch"]

Its loop is :func:`fit`, short enough to read in a notebook; :class:`_RunKeeper`
writes the history, the best weights and the checkpoint after each epoch. The
default recipe is the FER+ paper's (Barsoum et al. 2016): momentum SGD 0.9,
batch 32, learning rate 0.05, halved at epoch 20 and a tenth of it from epoch
40, 100 epochs, keeping the parameters of the best validation accuracy.

How it works, d2l style:

* data parallelism: every batch is cut into one slice per device with
  :func:`mxnet.gluon.utils.split_and_load`; each device runs forward and
  backward on its slice and a kvstore sums the gradients ('device' for
  several GPUs, 'local' for several CPU contexts, 'dist_sync' between
  machines launched with the DMLC environment variables);
* the lr follows the schedule per batch (:func:`make_lr_schedule`), so a
  resumed run continues on exactly the same curve;
* randomness (initial weights, dropout, augmentation, shuffling, the
  probability-mode label draws) comes from ``seed`` and the epoch number, so
  a CPU run is repeatable and resuming gives the run that was interrupted,
  up to the last bits: with Nesterov SGD (``optimizer="nag"``, as the
  recipes built on ``cpu`` have) the order in which MXNet's asynchronous
  engine runs a fresh process's updates moves them, and over many epochs a
  resumed run becomes another draw of the same recipe (docs/results.md).

The run folder stays usable whatever instant the process is killed at: every
file is replaced atomically, the checkpoint is committed by its json
(:func:`save_checkpoint`), and a lock file keeps a second process out.

The command line is ``python -m ferlib train`` (:func:`add_commands`).
"""
import contextlib
import copy
import csv
import dataclasses
import fcntl
import io
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

from . import __version__
from . import data as fer_data
from . import labels as fer_labels
from . import losses as fer_losses
from . import model as fer_model
from . import cpu, fileio, run, utils
from .errors import FERError
from .predict import majority_faces, validation_accuracy
from .labels import EMOTIONS
from .transforms import (DEFAULT_NORMALIZATION, FERPLUS_AUGMENTATION, INPUT_SIZE, NORMALIZATIONS, Augmentation,
                         check_normalization, normalization_of)

import mxnet as mx  # noqa: E402  (ferlib's package __init__ has run first)
from mxnet import autograd, gluon  # noqa: E402

#: Learning-rate schedules of :func:`train`.
SCHEDULES = ("ferplus", "cosine")
#: The paper's schedule: x1 before the first epoch, x0.5 before the second, x0.1 after.
FERPLUS_LR_STEPS = (20, 40)
FERPLUS_LR_FACTORS = (1.0, 0.5, 0.1)
#: The paper trains for up to 100 epochs.
DEFAULT_NUM_EPOCHS = 100
#: Optimizers of :func:`make_trainer`: momentum SGD, and Nesterov's accelerated gradient.
OPTIMIZERS = ("sgd", "nag")
#: Columns of history.json / history.csv, one record per epoch. With a weight average,
#: ``val_acc`` is the average's and ``val_acc_last`` the last weights' (else empty).
HISTORY_KEYS = ("epoch", "loss", "train_acc", "val_acc", "val_acc_last", "lr", "seconds", "images_per_sec")

@dataclasses.dataclass(frozen=True)
class Recipe:
    """What a training run learns with: the network, its input side and the SGD schedule.

    The defaults are the FER+ paper's VGG13 recipe. Named recipes are in :data:`RECIPES`;
    ``get_recipe("cpu", lr=0.01)`` is one with changes, ``train(data, out, recipe="cpu", lr=0.01)``
    trains with it, and ``python -m ferlib train --recipe cpu --lr 0.01`` does the same.

    Attributes
    ----------
    model, model_kwargs
        A name of :func:`ferlib.model.get_model` and its options (e.g. ``{"width": 0.25}``).
    input_size
        Side of the network input in pixels (64 in the paper; 48 is faster).
    num_epochs, batch_size, lr, momentum, wd, optimizer
        SGD settings. ``batch_size`` is per machine and split over its devices;
        ``optimizer`` is ``sgd`` or ``nag`` (Nesterov momentum).
    augmentation
        Changes to the training distortion, :class:`ferlib.transforms.Augmentation`'s fields
        (e.g. ``{"max_angle": 0, "max_skew": 0, "max_scale": 1}``: shifts and flips only);
        empty: the FER+ paper's.
    normalization
        The intensity normalisation of every face, in training and wherever the run is used
        (:func:`ferlib.transforms.normalize`): ``ferplus`` (the paper's) or ``standard``.
    ema_decay
        0: the run keeps its last weights. Else validation, ``best.params`` and the export use an
        exponential moving average of the weights (:class:`WeightAverage`) with this decay per step.
    ema_every
        Update the average every this many steps, with the decay of those steps compounded
        (:class:`WeightAverage`). The average does not feed back into training, so the trained
        weights are the same; at batch 32 on 2 cores an update after every step costs about a tenth
        of the step time (``docs/results.md``: 4 took a run from 79 to 69 minutes).
    validate_last_weights
        With an average, also validate the last weights each epoch (``val_acc_last`` in the
        history): a second pass over the validation split, about 3% of an epoch of ``cpu``.
    label_smoothing
        0: the loss's targets as they are. Else each target ``t`` becomes ``(1 - s) t + s / 8``
        (:class:`ferlib.losses.SoftTargetCrossEntropyLoss`; not with the multi-target loss).
    target_power
        1: the training targets as the crowd voted. Else each training distribution raised to this
        power and renormalised (:func:`ferlib.labels.sharpen`; probability and crossentropy only):
        above 1 sharper, towards the majority vote that validation and test count.
    no_wd
        True: no weight decay on BatchNorm's scale and shift and on biases, only on the weights of the
        convolutions and dense layers (gluon-cv's ``--no-wd``; He et al. 2019, "Bag of Tricks").
    sam_rho
        0: plain SGD. Else sharpness-aware minimisation (Foret et al. 2021): each step takes the gradient
        at the weights moved ``sam_rho`` uphill (:func:`train_batch`), which costs a second forward and
        backward pass per batch.
    schedule, warmup_epochs, lr_steps
        ``ferplus``: x1, x0.5 from ``lr_steps[0]``, x0.1 from ``lr_steps[1]``; ``cosine``: linear
        warm-up over ``warmup_epochs`` (default a tenth of the epochs, at most 5), then cosine to 0.
    cpu_precision
        What a training step on the CPU computes in (:data:`ferlib.utils.CPU_PRECISIONS`): ``float32``,
        ``bfloat16`` (:func:`bfloat16_view`), or ``auto``: bfloat16 where it is the faster
        (:func:`ferlib.cpu.bfloat16_is_fast`).
        The weights, their update, validation and the export stay float32. GPUs use ``amp`` instead.
    """

    model: str = "vgg13"
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    input_size: int = INPUT_SIZE
    num_epochs: int = DEFAULT_NUM_EPOCHS
    batch_size: int = 32
    lr: float = 0.05
    schedule: str = "ferplus"
    warmup_epochs: int = None
    lr_steps: tuple = FERPLUS_LR_STEPS
    wd: float = 0.0
    no_wd: bool = False
    momentum: float = 0.9
    optimizer: str = "sgd"
    ema_decay: float = 0.0
    ema_every: int = 1
    sam_rho: float = 0.0
    label_smoothing: float = 0.0
    target_power: float = 1.0
    validate_last_weights: bool = True
    augmentation: dict = dataclasses.field(default_factory=dict)
    normalization: str = DEFAULT_NORMALIZATION
    cpu_precision: str = "float32"

    def replace(self, **changes):
        """This recipe with some settings changed; an unknown setting is a FERError listing them."""
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise FERError(f"a recipe has no setting {', '.join(unknown)}; its settings are: {', '.join(names)}")
        return dataclasses.replace(self, **changes)


# Shifts and flips only: with the paper's rotations and skew, 18 epochs underfit; whole-pixel
# shifts keep the 48-pixel faces sharp (docs/results.md, ablation).
_CPU = Recipe(model="vgg13_half", input_size=48, batch_size=64, lr=0.05, optimizer="nag", schedule="cosine",
              warmup_epochs=1, wd=5e-4, num_epochs=40, ema_decay=0.999, normalization="standard",
              augmentation={"max_angle": 0.0, "max_skew": 0.0, "max_scale": 1.0, "whole_pixels": True},
              cpu_precision="auto")
# The time that bfloat16 steps save, spent on 13 more epochs, with the stronger weight decay they need.
_CPU_LONG = _CPU.replace(wd=1e-3, num_epochs=53, validate_last_weights=False)
_CPU_LONG_AA = _CPU_LONG.replace(model_kwargs={"antialiased_blocks": 2})

#: The named recipes:
#:
#: * ``paper``: the FER+ paper's VGG13 recipe (the :class:`Recipe` defaults), for GPUs;
#: * ``cpu``: the CPU recipe for the real data (``make demo`` trains it there):
#:   ``vgg13_half`` at 48x48, per-image standardisation, whole-pixel shifts and flips only,
#:   Nesterov momentum, cosine schedule, a moving average of the weights, bfloat16 steps where they
#:   are the faster; 40 epochs of about 105 s on 2 cores in float32 (about 70 minutes; see
#:   the README's results table), 54 minutes in bfloat16 on a machine 1.2x slower in float32;
#: * ``cpu_long``: ``cpu`` with 53 epochs and weight decay 1e-3, one validation pass an epoch: about
#:   70 minutes on 2 AMD cores in bfloat16, 48 on 2 Intel cores with AMX, 90 or more in float32,
#:   about 4 hours on 2 cores with AVX2 only (``docs/results.md``'s ablation and the README's
#:   "bfloat16 on the CPU");
#: * ``cpu_long_aa``: ``cpu_long`` with anti-aliased poolings in the network's last two blocks
#:   (``antialiased_blocks=2``), level with ``cpu_long`` on test (``docs/results.md``
#:   has every run's figures); as fast as ``cpu_long`` with AMX (48-55 minutes, 65 on a
#:   slower host of that kind), about 1.04x slower on 2 AMD cores (83-84 minutes on slow hosts, 77-81
#:   once :func:`bfloat16_view` gave the first convolution two channels, 68-73 since ``import ferlib``
#:   keeps OpenMP to one team of threads, :func:`ferlib.cpu.keep_one_openmp_team`; ``docs/results.md``,
#:   and the README's "bfloat16 on the CPU"); the network of ferlib's pretrained weights;
#: * ``cpu_long_aa_b32``: ``cpu_long_aa`` at batch 32 with the learning rate halved (0.025) and the
#:   average's decay per step 0.9995, so that its span in epochs stays; the average moves every fourth
#:   step (``ema_every=4``), which trains the same weights in about 0.87x the time (its timings on
#:   both machines are in ``docs/results.md``);
#: * ``cpu_small``: the earlier CPU recipe, a quarter of the channels, in half the time
#:   (about 53 s per epoch, 40 epochs in about 36 minutes) and about 2.5 points less accurate;
#: * ``synthetic``: ``cpu_small``'s network without dropout, which learns the synthetic set to
#:   over 90% validation accuracy within 10 epochs (tests, ``make demo``, quick notebooks).
#:
#: Narrow networks learn slowly with the paper's dropout after every block and its
#: learning rate of 0.05, hence the differences.
RECIPES = {
    "paper": Recipe(),
    "cpu": _CPU,
    "cpu_long": _CPU_LONG,
    "cpu_long_aa": _CPU_LONG_AA,
    "cpu_long_aa_b32": _CPU_LONG_AA.replace(batch_size=32, lr=0.025, ema_decay=0.9995, ema_every=4),
    "cpu_small": Recipe(model="vgg13_small", model_kwargs={"conv_dropout": 0.0, "dense_dropout": 0.5},
                        input_size=48, lr=0.02, schedule="cosine", warmup_epochs=2, wd=5e-4, num_epochs=40),
    "synthetic": Recipe(model="vgg13_small", model_kwargs={"conv_dropout": 0.0, "dense_dropout": 0.0},
                        input_size=48, lr=0.02, schedule="cosine", warmup_epochs=1, wd=5e-4, num_epochs=10),
}


def get_recipe(recipe="paper", **changes):
    """A :class:`Recipe` by name (or as given), with ``changes``; a wrong name lists the valid ones."""
    if not isinstance(recipe, Recipe):
        if recipe not in RECIPES:
            raise FERError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
        recipe = RECIPES[recipe]
    return recipe.replace(**changes)


#: A checkpoint file under its versioned name (see :func:`save_checkpoint`).
_STAGED_CHECKPOINT = re.compile(r"checkpoint-\d+\.(params|states)")
#: Settings that must not change when a run is resumed (num_epochs may grow).
RESUME_KEYS = ("model", "model_kwargs", "mode", "input_size", "batch_size", "lr", "schedule", "warmup_epochs",
               "lr_steps", "wd", "no_wd", "momentum", "optimizer", "ema_decay", "ema_every", "sam_rho",
               "label_smoothing", "target_power", "augmentation", "normalization", "seed")


# --------------------------------------------------------------------------- devices and kvstore


def get_contexts(gpus=None):
    """Contexts from ``gpus``: a ``--gpus`` string (see :func:`ferlib.utils.parse_devices`),
    a Context, or a list of Contexts. ``None`` means all GPUs, else the CPU."""
    if isinstance(gpus, mx.Context):
        return [gpus]
    if isinstance(gpus, (list, tuple)) and gpus and all(isinstance(c, mx.Context) for c in gpus):
        return list(gpus)
    return utils.parse_devices(gpus)


def is_distributed_worker():
    """True in a process launched as a worker of MXNet's distributed kvstore."""
    return os.environ.get("DMLC_ROLE") == "worker"


def make_kvstore(kvstore, ctx):
    """The kvstore that sums gradients: a name for one machine, a KVStore object between machines.

    ``None`` chooses: ``dist_sync`` in a DMLC worker process, ``device`` for
    several GPUs (sums on the GPUs), ``local`` for several CPU contexts (sums
    on the CPU), and no kvstore for one device.
    """
    if kvstore is None:
        if is_distributed_worker():
            kvstore = "dist_sync"
        elif len(ctx) == 1:
            return None
        else:
            kvstore = "device" if ctx[0].device_type == "gpu" else "local"
    if isinstance(kvstore, str) and kvstore.startswith("dist"):
        if not is_distributed_worker():
            raise FERError(f"kvstore {kvstore!r} needs a distributed launch: set DMLC_ROLE=worker, "
                           "DMLC_PS_ROOT_URI, DMLC_PS_ROOT_PORT, DMLC_NUM_SERVER and DMLC_NUM_WORKER "
                           "(see the README) and start a scheduler and server(s) too")
        return mx.kv.create(kvstore)
    return kvstore


# --------------------------------------------------------------------------- learning rate


def ferplus_lr(lr, epoch, lr_steps=FERPLUS_LR_STEPS):
    """The paper's step schedule: ``lr`` until ``lr_steps[0]``, half until ``lr_steps[1]``, a tenth after."""
    first, second = lr_steps
    factor = FERPLUS_LR_FACTORS[0] if epoch < first else FERPLUS_LR_FACTORS[1] if epoch < second \
        else FERPLUS_LR_FACTORS[2]
    return lr * factor


def default_warmup_epochs(num_epochs):
    """Warm-up of the cosine schedule: a tenth of the run, at most 5 epochs."""
    return min(5, num_epochs // 10)


def make_lr_schedule(schedule, lr, num_epochs, iters_per_epoch, warmup_epochs=None, lr_steps=FERPLUS_LR_STEPS):
    """A function ``lr_at(num_update)`` giving the learning rate of batch ``num_update`` (0-based).

    ``ferplus``: :func:`ferplus_lr` by epoch. ``cosine``: linear warm-up from 0
    over ``warmup_epochs``, then :class:`mxnet.lr_scheduler.CosineScheduler`
    down to 0 at the last batch.
    """
    check_schedule(schedule)
    if schedule == "ferplus":
        return lambda num_update: ferplus_lr(lr, num_update // iters_per_epoch, lr_steps)
    warmup_epochs = default_warmup_epochs(num_epochs) if warmup_epochs is None else warmup_epochs
    total = num_epochs * iters_per_epoch
    warmup = min(warmup_epochs * iters_per_epoch, total - 1)
    # MXNet's scheduler is a pure function of num_update (base_lr_orig), so
    # calling it at any step, e.g. after a resume, gives the same value.
    cosine = mx.lr_scheduler.CosineScheduler(max_update=max(total, 1), base_lr=lr, final_lr=0.0,
                                             warmup_steps=warmup, warmup_begin_lr=0.0)
    return lambda num_update: float(cosine(num_update))


def check_optimizer(optimizer):
    if optimizer not in OPTIMIZERS:
        raise FERError(f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    return optimizer


def check_schedule(schedule):
    if schedule not in SCHEDULES:
        raise FERError(f"unknown lr schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    return schedule


# --------------------------------------------------------------------------- one batch, one evaluation


def share_initial_weights(trainer):
    """Give every device and every machine the first worker's weights now, and wait for them.

    Gluon does this lazily inside the first ``trainer.step``, after the first
    backward pass: the other workers then compute their first gradient on
    their own random weights, and with ``dist_sync`` a worker's first
    gradient push can overtake its own weight pull, which then fetches the
    summed gradient instead of the weights (seen as one layer differing
    between workers). Gluon has no public call for this step, hence the two
    private ones.
    """
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    mx.nd.waitall()


def build_net(model, model_kwargs, ctx, seed=0):
    """The initialised, hybridized network that :func:`train` starts from.

    Same ``seed``, same weights. A first forward pass fixes the shapes the
    layers left open (e.g. the first dense layer's input), so the parameters
    exist on every device before the trainer and the kvstore see them.
    """
    kwargs = dict(model_kwargs or {})
    net = fer_model.get_model(model, **kwargs)
    _seed_everything(seed)
    fer_model.initialize(net, ctx)
    size = kwargs.get("input_size", INPUT_SIZE)
    # In training mode: at prediction MXNet's oneDNN (MKLDNN) convolutions
    # store their weights in place in a blocked layout that a distributed
    # kvstore cannot send (it would send scrambled weights or fail). That
    # pass updates the BatchNorm statistics, so they are put back afterwards.
    statistics = [p for p in net.collect_params().values() if p.grad_req == "null"]
    saved = {}
    for param in statistics:
        try:
            saved[param.name] = param.data(ctx[0]).copy()  # e.g. a pretrained backbone's
        except gluon.parameter.DeferredInitializationError:
            pass  # shape known only after the forward pass; starts from its initializer
    with autograd.train_mode():
        net(mx.nd.zeros((2, 1, size, size), ctx=ctx[0]))
    for param in statistics:
        if param.name in saved:
            param.set_data(saved[param.name])
        else:
            param.initialize(ctx=ctx, force_reinit=True)
    net.hybridize(static_alloc=True)
    return net


def resolve_cpu_precision(cpu_precision, ctx):
    """``float32`` or ``bfloat16``: what a training step on the devices ``ctx`` computes in.

    ``auto`` is bfloat16 where its steps beat float32's (:func:`ferlib.cpu.bfloat16_is_fast`: AVX-512
    BF16, with AMX switched on where the CPU has it); ``bfloat16`` needs AVX-512 BF16. GPUs always step
    in float32 here (``amp`` is their float16)."""
    if cpu_precision not in utils.CPU_PRECISIONS:
        raise FERError(f"cpu_precision must be one of {', '.join(utils.CPU_PRECISIONS)}, got {cpu_precision!r}")
    if any(c.device_type != "cpu" for c in ctx) or cpu_precision == "float32":
        return "float32"
    if cpu_precision == "auto":
        return "bfloat16" if cpu.bfloat16_is_fast() else "float32"
    if not cpu.cpu_has_bfloat16():
        raise FERError("cpu_precision bfloat16: this CPU has no AVX-512 BF16 instructions (avx512_bf16 in "
                       "/proc/cpuinfo), so bfloat16 would be slower than float32; use float32 or auto")
    return "bfloat16"


def bfloat16_view(net, two_channel_input=True):
    """``net`` computing in bfloat16, for its training steps on a CPU with AVX-512 BF16.

    A :class:`~mxnet.gluon.SymbolBlock` over ``net``'s own parameters, so a step through it trains
    ``net``: MXNet's AMP pass casts the inputs of the convolutions and dense layers to bfloat16,
    which oneDNN multiplies about 1.5x faster than float32 on 2 cores (README, "bfloat16 on the
    CPU"). The weights, their gradients' sum in the update, BatchNorm's statistics and the weight
    average stay float32, and so do validation and the export, which use ``net`` itself.

    ``two_channel_input``: compute a first convolution over one channel (the grey face) as one over
    two, the second channel zeros in the input and in the weights (:func:`first_conv_on_two_channels`):
    the same sums. oneDNN 2 has no blocked bfloat16 kernel for one input channel, so the face would
    leave that convolution in the plain layout, where the BatchNorm after it takes oneDNN's
    reference path (17 ms of a 160 ms step of ``cpu_long_aa`` on AMD Zen 4, against 1 ms blocked;
    on Intel with AMX, a plain-layout kernel and more reorders: 19-29 ms of a 166-226 ms step).
    About 1.1x a step with AMX and without (``bench/bench_train_loop.py``). ``False`` keeps one channel.
    """
    import warnings
    from mxnet.contrib import amp as mx_amp

    data = mx.sym.var("data")
    symbol = net(data)
    if two_channel_input:
        symbol = first_conv_on_two_channels(symbol, net.collect_params())
    symbol = mx_amp.convert_symbol(symbol, target_dtype="bfloat16", cast_optional_params=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "cannot decide type for data": float32, as fed
        view = gluon.SymbolBlock(symbol, data, params=net.collect_params())
    view.hybridize(static_alloc=True)
    return view


def first_conv_on_two_channels(symbol, params):
    """``symbol`` with its first convolution, if it reads one input channel, reading two: its input and
    its weights each beside zeros of their own shape (``zeros_like``, then ``concat`` on the channel
    axis), so it computes the same sums and its weights, still of shape (C, 1, k, k) in ``params``,
    get the same gradients. Any other ``symbol`` is returned as it is."""
    graph = json.loads(symbol.tojson())
    nodes = graph["nodes"]
    first = next((i for i, node in enumerate(nodes) if node["op"] == "Convolution"), None)
    if first is None:
        return symbol
    source, weight = nodes[first]["inputs"][:2]
    weight_name = nodes[weight[0]]["name"]
    if weight_name not in params or params[weight_name].shape[1] != 1:
        return symbol

    widened = []  # go in before the convolution, whose inputs come before it
    for name, entry in (("data", source), ("weight", weight)):
        zeros = first + len(widened)
        widened += [{"op": "zeros_like", "name": f"two_channel_{name}_zeros", "inputs": [entry]},
                    {"op": "Concat", "name": f"two_channel_{name}", "attrs": {"dim": "1", "num_args": "2"},
                     "inputs": [entry, [zeros, 0, 0]]}]

    def moved(index):
        return index + len(widened) if index >= first else index

    for node in nodes:
        node["inputs"] = [[moved(entry[0]), *entry[1:]] for entry in node["inputs"]]
    nodes[first:first] = widened
    nodes[moved(first)]["inputs"][:2] = [[first + 1, 0, 0], [first + 3, 0, 0]]
    graph["arg_nodes"] = [moved(i) for i in graph["arg_nodes"]]
    graph["heads"] = [[moved(entry[0]), *entry[1:]] for entry in graph["heads"]]
    graph.pop("node_row_ptr", None)  # rebuilt from the nodes when loaded
    return mx.sym.load_json(json.dumps(graph))


def make_trainer(net, lr=0.05, momentum=0.9, wd=0.0, kvstore=None, amp=False, optimizer="sgd", no_wd=False):
    """The momentum-SGD (or, ``optimizer="nag"``, Nesterov) :class:`~mxnet.gluon.Trainer` of :func:`train`.

    ``no_wd``: the weight decay spares BatchNorm's ``gamma`` and ``beta`` and every ``bias`` (their
    ``wd_mult`` becomes 0; Gluon otherwise decays every parameter).

    The kvstore only sums the gradients (``update_on_kvstore=False``): every
    device, and every machine, then runs the same SGD update itself. That is
    what lets :func:`train` set the learning rate batch by batch, also
    between machines, and keeps the optimizer state in ``checkpoint.states``.
    """
    kind = mx.optimizer.NAG if check_optimizer(optimizer) == "nag" else mx.optimizer.SGD
    if no_wd:  # read by the optimizer when the Trainer builds it: set before
        net.collect_params(".*gamma|.*beta|.*bias").setattr("wd_mult", 0.0)
    sgd = kind(learning_rate=lr, momentum=momentum, wd=wd, multi_precision=amp)
    trainer = gluon.Trainer(net.collect_params(), sgd, kvstore=kvstore,
                            update_on_kvstore=False if kvstore is not None else None)
    if amp:
        from mxnet.contrib import amp as mx_amp
        mx_amp.init_trainer(trainer)
    return trainer


def train_batch(net, trainer, loss_fn, data, target, ctx, step_size=None, amp=False, sam_rho=0.0):
    """One SGD step on a batch split over the devices ``ctx``.

    Parameters
    ----------
    net, trainer, loss_fn
        The network, its :class:`mxnet.gluon.Trainer` and a per-sample loss.
    data, target : NDArray (N, 1, S, S) and (N, 8)
        The batch, on any device; ``split_and_load`` gives each device its slice.
    ctx : list of Context
    step_size : int, optional
        Number of samples the summed gradient is divided by (default ``N``;
        the global batch when several machines add their gradients).
    amp : bool
        Scale the loss for float16 training (:mod:`mxnet.contrib.amp`).
    sam_rho : float
        Sharpness-aware minimisation (Foret et al. 2021) when above 0: the step uses the gradient
        taken at the weights moved ``sam_rho`` along the normalised gradient (:func:`uphill`),
        so it seeks weights whose whole neighbourhood has a low loss. Each device moves along its
        own slice's gradient (the paper's m-sharpness), so nothing extra crosses the kvstore.

    Returns
    -------
    loss_sum, correct : NDArray of shape (1,) on ``ctx[0]``
        Summed loss and number of samples whose arg-max prediction is one of
        the largest target classes (at the weights before the step); read them with
        ``.asscalar()`` only when needed, so that the devices keep running ahead.
    """
    xs = gluon.utils.split_and_load(data, ctx, even_split=False)
    ys = gluon.utils.split_and_load(target, ctx, even_split=False)
    outputs, losses = _forward_backward(net, trainer, loss_fn, xs, ys, amp)
    if sam_rho:
        with uphill(net, sam_rho, ctx):
            _forward_backward(net, trainer, loss_fn, xs, ys, amp)  # its gradients replace the first ones
    trainer.step(step_size or data.shape[0])
    loss_sum = sum(loss.sum().as_in_context(ctx[0]) for loss in losses)
    correct = sum(_num_correct(out, y).as_in_context(ctx[0]) for out, y in zip(outputs, ys))
    return loss_sum, correct


def _forward_backward(net, trainer, loss_fn, xs, ys, amp):
    """The outputs and losses of each device's slice, and their gradients in the parameters."""
    with autograd.record():
        outputs = [net(x) for x in xs]
        losses = [loss_fn(out, y) for out, y in zip(outputs, ys)]
        if amp:
            from mxnet.contrib import amp as mx_amp
            with mx_amp.scale_loss(losses, trainer) as scaled:
                autograd.backward(scaled)
    if not amp:
        autograd.backward(losses)
    return outputs, losses


@contextlib.contextmanager
def uphill(net, rho, ctx):
    """Inside the block, each device's copy of ``net``'s trained parameters is moved by
    ``rho * g / ||g||``, ``g`` its current gradient (all parameters as one vector); after it,
    the weights are back where they were and only the gradients have changed."""
    params = [p for p in net.collect_params().values() if p.grad_req != "null"]
    moves = []
    for c in ctx:
        grads = [p.grad(c) for p in params]
        norm = mx.nd.sqrt(mx.nd.add_n(*[mx.nd.sum(g * g) for g in grads]))
        scale = rho / (norm + 1e-12)
        moves.append([mx.nd.broadcast_mul(g, scale.reshape((1,) * g.ndim)) for g in grads])
        for p, move in zip(params, moves[-1]):
            weights = p.data(c)
            weights += move
    try:
        yield
    finally:
        for c, device_moves in zip(ctx, moves):
            for p, move in zip(params, device_moves):
                weights = p.data(c)
                weights -= move


def _num_correct(logits, target):
    """Samples whose predicted class has the largest target value (ties: any of them)."""
    pred = logits.argmax(axis=1)
    picked = mx.nd.pick(target, pred, axis=1)
    return (picked >= target.max(axis=1)).sum()


# --------------------------------------------------------------------------- run folder


class WeightAverage:
    """An exponential moving average of all of a network's parameters, BatchNorm statistics included.

    After SGD step ``n`` (counted from 0), ``average = d * average + (1 - d) * weights`` with
    ``d = min(decay, (1 + n) / (10 + n))``, so the first steps are not held back by the random start.
    The average of the last few hundred steps generalises better than the last weights, more so while
    the learning rate is still high. ``with average.applied(): ...`` puts it into the network for a while.

    With ``every`` above 1 it is updated after every ``every``-th step only, with ``d`` the product of
    the skipped steps' and its own: the weights of the steps in between are stood in for by the latest.
    Against an average over some 1,000-2,000 steps that changes little, and it saves the update's
    three small operations per array (54 arrays in ``vgg13_half``) at the other steps.
    """

    def __init__(self, net, decay, every=1):
        if not 0.0 < decay < 1.0:
            raise FERError(f"ema_decay must be in (0, 1), or 0 for no average; got {decay!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise FERError(f"ema_every must be a whole number of steps, 1 or more; got {every!r}")
        self.decay, self.every = float(decay), every
        self.params = net._collect_params_with_prefix()  # the structural names save_parameters uses
        self.shadow = {name: p.data().copy() for name, p in self.params.items()}

    def update(self, step):
        """After SGD step ``step``: the average moves if ``step + 1`` is a multiple of ``every``."""
        if (step + 1) % self.every:
            return
        d = 1.0
        for n in range(step + 1 - self.every, step + 1):
            d *= min(self.decay, (1.0 + n) / (10.0 + n))
        for name, p in self.params.items():
            average = self.shadow[name]
            average *= d
            average += (1.0 - d) * p.data().as_in_context(average.context)

    @contextlib.contextmanager
    def applied(self):
        """The network holds the average inside the block, its own weights again after it."""
        own = {name: p.data().copy() for name, p in self.params.items()}
        for name, p in self.params.items():
            p.set_data(self.shadow[name])
        try:
            yield
        finally:
            for name, p in self.params.items():
                p.set_data(own[name])

    def save_with(self, path):
        """Save the network's weights and the average in one file (a checkpoint's ``.params``).

        Copies made by MXNet's engine are saved, as ``save_parameters`` saves: an array that oneDNN keeps
        in its blocked layout is then put back in order by the engine's OpenMP team. Saved as it is, it
        would be by this thread, which would keep a second team, and every later step would put the
        threads to sleep and wake them (:func:`ferlib.cpu.keep_one_openmp_team`)."""
        arrays = {name: p.data().copyto(mx.cpu()) for name, p in self.params.items()}
        arrays.update({_AVERAGE_KEY + name: a.copyto(mx.cpu()) for name, a in self.shadow.items()})
        mx.nd.save(str(path), arrays)

    def load_with(self, path, ctx):
        """Load what :meth:`save_with` wrote: the weights into the network, the average here."""
        arrays = mx.nd.load(str(path))
        missing = [name for name in self.params if name not in arrays or _AVERAGE_KEY + name not in arrays]
        if missing:
            raise FERError(f"{path} holds no weight average for {', '.join(missing[:3])}: it was not written "
                           "by a run with ema_decay")
        for name, p in self.params.items():
            p.set_data(arrays[name])
            self.shadow[name] = arrays[_AVERAGE_KEY + name].as_in_context(ctx[0])


_AVERAGE_KEY = "average:"


def recipe_average(net, recipe):
    """The :class:`WeightAverage` of ``net`` that ``recipe`` asks for (its decay and ``every``), or None."""
    return WeightAverage(net, recipe.ema_decay, recipe.ema_every) if recipe.ema_decay else None


def _staged_name(name, epoch):
    """The versioned name a checkpoint file is first written under, e.g. ``checkpoint-0003.params``."""
    stem, suffix = name.split(".")
    return f"{stem}-{int(epoch):04d}.{suffix}"


def save_checkpoint(run_dir, net, trainer, info, average=None):
    """Write the checkpoint of ``info["epoch"]``; a kill at any instant leaves one complete checkpoint.

    1. The parameters and the trainer states are written in full, and synced,
       under names holding the epoch (``checkpoint-0003.params`` / ``.states``).
    2. ``checkpoint.json`` (``info``, the SHA-256 and names of both files)
       atomically replaces the previous one: from this instant the new
       checkpoint is the one that counts.
    3. Both files are renamed to ``checkpoint.params`` / ``checkpoint.states``.

    A kill before 2 leaves the previous checkpoint whole (the new files are
    stray and removed at the next start); a kill after 2 leaves the new one,
    which :func:`load_checkpoint` finds under either name and
    :func:`settle_checkpoint` completes. An error while writing removes the new files.
    With a :class:`WeightAverage` the ``.params`` file holds the average too.
    """
    run_dir = Path(run_dir)
    staged = {run.CHECKPOINT_PARAMS: _staged_name(run.CHECKPOINT_PARAMS, info["epoch"]),
              run.CHECKPOINT_STATES: _staged_name(run.CHECKPOINT_STATES, info["epoch"])}
    try:
        save_params = net.save_parameters if average is None else average.save_with
        for name, save in ((run.CHECKPOINT_PARAMS, save_params), (run.CHECKPOINT_STATES, trainer.save_states)):
            save(str(run_dir / staged[name]))
            fileio.fsync_file(run_dir / staged[name])
        hashes = {name: fileio.file_sha256(run_dir / file) for name, file in staged.items()}
        fileio.atomic_write_json(run_dir / run.CHECKPOINT_JSON, {**info, "sha256": hashes, "staged": staged})
    except BaseException:
        # Not committed: the previous checkpoint stands, these files are of no use.
        for file in staged.values():
            if (run_dir / file).exists():
                (run_dir / file).unlink()
        raise
    _promote(run_dir, {name: run_dir / file for name, file in staged.items()})


def _promote(run_dir, files):
    """Rename the checkpoint files ``{final name: current path}`` to their final names."""
    for name, path in files.items():
        if path.name != name:
            os.replace(path, run_dir / name)
    fileio.fsync_dir(run_dir)


def load_checkpoint(run_dir):
    """``checkpoint.json`` of ``run_dir`` after checking the two files it names, or None.

    Follows the json: each file is taken under its final name or, after a kill
    between the steps of :func:`save_checkpoint`, under its versioned name,
    whichever has the recorded SHA-256. Changes nothing on disk. The returned
    dict has a ``files`` entry ``{final name: Path found}``.
    """
    run_dir = Path(run_dir)
    path = run_dir / run.CHECKPOINT_JSON
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        hashes, staged = info["sha256"], info.get("staged", {})
        int(info["epoch"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise FERError(f"{path} is damaged ({e}); start the run again without --resume") from None
    info["files"] = {name: _find_checkpoint_file(run_dir, path, name, hashes.get(name), staged.get(name))
                     for name in (run.CHECKPOINT_PARAMS, run.CHECKPOINT_STATES)}
    return info


def _find_checkpoint_file(run_dir, json_path, name, digest, staged):
    candidates = [run_dir / name] + ([run_dir / Path(staged).name] if staged else [])
    for file in candidates:
        if file.is_file() and fileio.file_sha256(file) == digest:
            return file
    raise FERError(f"{run_dir / name} does not match {json_path} (the files of the checkpoint were changed "
                   "or lost); start the run again without --resume")


def settle_checkpoint(run_dir, info):
    """Finish a checkpoint that a kill left half renamed, then remove stray files.

    ``info`` is the result of :func:`load_checkpoint`; afterwards both files
    are under their final names. Call it only while holding the run's lock.
    """
    run_dir = Path(run_dir)
    _promote(run_dir, info["files"])
    info["files"] = {name: run_dir / name for name in info["files"]}
    remove_stale_files(run_dir)
    return info


def remove_stale_files(run_dir):
    """Remove what an interrupted write leaves in a run folder: versioned checkpoint
    files no ``checkpoint.json`` needs (call after :func:`settle_checkpoint`),
    the temporary files of atomic writes, and unfinished export folders."""
    run_dir = Path(run_dir)
    for path in run_dir.iterdir():
        name = path.name
        tmp = name.startswith(".") and name.endswith(".tmp") and any(name.startswith(f".{n}.") for n in run.TRAINING_FILES)
        if tmp or _STAGED_CHECKPOINT.fullmatch(name):
            path.unlink()
        elif name.startswith(".export-") and path.is_dir():
            shutil.rmtree(path)


def is_run_file(name):
    """True for the name of a file that training writes into a run folder (see :data:`run.TRAINING_FILES`)."""
    return name in run.TRAINING_FILES or bool(_STAGED_CHECKPOINT.fullmatch(name))


@contextlib.contextmanager
def hold_run_lock(run_dir):
    """Hold ``run_dir/train.lock`` exclusively (``fcntl.flock``) inside the ``with`` block.

    The lock goes with the process: the kernel releases it when the block
    ends, on an exception, and also when the process is killed. The file holds
    the pid of the holder, for the message another process gets.

    Raises
    ------
    FERError
        When another process holds the lock: the folder is being trained.
    """
    path = Path(run_dir) / run.LOCK
    try:
        handle = open(path, "a+")
    except OSError as err:
        raise FERError(f"cannot create the lock file {path}: {fileio.os_reason(err)}") from None
    with handle:
        _acquire(handle, run_dir)
        try:
            yield path
        finally:
            handle.truncate(0)  # no stale pid left behind
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _acquire(handle, run_dir):
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        by = f" (pid {holder})" if holder.isdigit() else ""
        raise FERError(f"{run_dir} is in use by another training process{by}; wait for it to end, "
                       "or stop it, before --resume or --overwrite") from None
    except OSError as err:
        raise FERError(f"cannot lock {Path(run_dir) / run.LOCK}: {err.strerror}") from None
    handle.truncate(0)  # "a+": the write below then lands at the start
    handle.write(f"{os.getpid()}\n")
    handle.flush()


def write_history(run_dir, history):
    """``history.json`` (list of records) and ``history.csv`` (same columns), atomically."""
    run_dir = Path(run_dir)
    fileio.atomic_write_json(run_dir / run.HISTORY_JSON, history)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(HISTORY_KEYS), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    fileio.atomic_write_bytes(run_dir / run.HISTORY_CSV, buffer.getvalue().encode("utf-8"))


def read_history(run_dir):
    """The per-epoch records of a run folder (``history.json``)."""
    path = Path(run_dir) / run.HISTORY_JSON
    if not path.is_file():
        raise FERError(f"{path} is missing: {Path(run_dir)} is not a training run folder")
    return json.loads(path.read_text(encoding="utf-8"))


def _run_exists(run_dir):
    return any((run_dir / name).exists() for name in (run.CONFIG, run.CHECKPOINT_JSON, run.HISTORY_JSON))


def _clear_run(run_dir):
    """Remove the previous run of ``run_dir``: its files and the evaluations of its network."""
    from .evaluate import evaluation_outputs  # evaluate is not needed for training otherwise

    for name in run.TRAINING_FILES:
        if name != run.LOCK and (run_dir / name).exists():  # the lock is held by this run
            (run_dir / name).unlink()
    for path in evaluation_outputs(run_dir):
        path.unlink()
    remove_stale_files(run_dir)


# --------------------------------------------------------------------------- live plot


def in_notebook():
    """True inside a Jupyter / Colab kernel (where figures can be redrawn in place)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and ("IPKernelApp" in getattr(shell, "config", {})
                                  or type(shell).__name__ in ("ZMQInteractiveShell", "Shell"))


class LivePlot:
    """A live plot of loss and accuracy per epoch, to pass as ``train(..., callback=LivePlot())``.

    In the style of d2l's ``Animator``: in a notebook one figure (loss on the
    left, train and validation accuracy on the right) is redrawn in place
    after every epoch; elsewhere (a script, the tests) each epoch is printed
    as one line instead, or nothing with ``quiet=True``.

    Parameters
    ----------
    title : str, optional
    figsize : (float, float)
    quiet : bool
        Outside a notebook, print nothing.

    Attributes
    ----------
    history : list of dict
        The records received so far; :meth:`save` writes the figure to a file.
    """

    def __init__(self, title=None, figsize=(9, 3.2), quiet=False):
        self.title, self.figsize, self.quiet = title, figsize, quiet
        self.history = []
        self._notebook = in_notebook()
        self._handle = None
        self._fig = None

    def __call__(self, record):
        self.history.append(dict(record))
        if self._notebook:
            self._draw()
            from IPython.display import display
            if self._handle is None:
                self._handle = display(self._fig, display_id=True)
            else:
                self._handle.update(self._fig)
        elif not self.quiet:
            print(format_record(record), flush=True)

    def figure(self):
        """The matplotlib figure of the history so far."""
        self._draw()
        return self._fig

    def _draw(self):
        import matplotlib.pyplot as plt
        if self._fig is None:
            self._fig, self._axes = plt.subplots(1, 2, figsize=self.figsize)
            plt.close(self._fig)  # drawn through display() only, not again at the end of the cell
        epochs = [r["epoch"] for r in self.history]
        loss_ax, acc_ax = self._axes
        loss_ax.clear()
        acc_ax.clear()
        loss_ax.plot(epochs, [r["loss"] for r in self.history], "o-", label="train loss")
        loss_ax.set_xlabel("epoch")
        loss_ax.set_ylabel("loss")
        loss_ax.legend()
        acc_ax.plot(epochs, [r["train_acc"] for r in self.history], "o-", label="train acc")
        acc_ax.plot(epochs, [r["val_acc"] for r in self.history], "s--", label="val acc")
        acc_ax.set_xlabel("epoch")
        acc_ax.set_ylabel("accuracy")
        acc_ax.set_ylim(0, 1)
        acc_ax.legend()
        for ax in self._axes:
            ax.grid(True, alpha=0.3)
        if self.title:
            self._fig.suptitle(self.title)
        self._fig.tight_layout()

    def save(self, path):
        """Write the figure (PNG, PDF, ... by the suffix of ``path``)."""
        self.figure().savefig(path, dpi=100)
        return Path(path)


def format_record(record):
    """One line for an epoch record."""
    return (f"epoch {record['epoch']}: loss {record['loss']:.4f}, train acc {record['train_acc']:.3f}, "
            f"val acc {record['val_acc']:.3f}"
            + (f" (last weights {record['val_acc_last']:.3f})" if record.get("val_acc_last") is not None else "")
            + f", lr {record['lr']:.4g}, {record['seconds']:.1f} s, "
            f"{record['images_per_sec']:.0f} images/s")


# --------------------------------------------------------------------------- the job


def _open_run_folder(run_dir, resume, overwrite, progress):
    """Make ``run_dir`` ready for training; returns the checkpoint to resume from, or None.

    Call it holding the run's lock: it completes a half-renamed checkpoint and
    removes what interrupted writes left behind.
    """
    checkpoint = load_checkpoint(run_dir) if resume else None
    if _run_exists(run_dir) and checkpoint is None:
        if not (overwrite or resume):
            raise FERError(f"{run_dir} already holds a training run; continue it with --resume, "
                           "replace it with --overwrite, or choose another --out")
        if resume and progress:  # resume of a run that never finished an epoch: start it again
            print(f"{run_dir} has no checkpoint yet: starting the run from epoch 1", flush=True)
        _clear_run(run_dir)
    if checkpoint is not None:
        settle_checkpoint(run_dir, checkpoint)
    else:
        remove_stale_files(run_dir)
    return checkpoint


def _start_run_folder(run_dir, config, resume, overwrite, progress):
    """Open the run folder (see :func:`_open_run_folder`), write its config and labels; the checkpoint
    to resume from, or None."""
    checkpoint = _open_run_folder(run_dir, resume, overwrite, progress)
    if checkpoint is not None:
        _check_resumed_settings(run_dir, config)
    fileio.atomic_write_json(run_dir / run.CONFIG, config)
    fileio.atomic_write_json(run_dir / run.LABELS, list(EMOTIONS))
    return checkpoint


def _check_resumed_settings(run_dir, config):
    """Refuse to resume ``run_dir`` with settings (:data:`RESUME_KEYS`) other than its own."""
    if not (run_dir / run.CONFIG).is_file():
        raise FERError(f"{run_dir / run.CONFIG} is missing: cannot check the settings of the run to resume")
    old = json.loads((run_dir / run.CONFIG).read_text(encoding="utf-8"))
    old["normalization"] = normalization_of(old)  # runs from before the setting: the FER+ one
    # Runs from before these settings: the default.
    for name in ("sam_rho", "label_smoothing", "target_power", "no_wd", "ema_every"):
        old.setdefault(name, getattr(Recipe, name))
    changed = [k for k in RESUME_KEYS if old.get(k) != config[k]]
    if changed:
        raise FERError(f"cannot resume {run_dir} with different settings: "
                       + ", ".join(f"{k} {old.get(k)!r} -> {config[k]!r}" for k in changed))


def _shard(dataset, rank, num_parts):
    """Worker ``rank``'s equal share of a training set (every ``num_parts``-th item).

    Equal sizes matter: with ``dist_sync`` every worker must make the same
    number of steps, or the one with more waits forever for the others.
    """
    if num_parts == 1:
        return dataset
    share = len(dataset) // num_parts
    if share == 0:
        raise FERError(f"the training split has {len(dataset)} faces, fewer than the {num_parts} workers")
    keep = np.arange(rank, share * num_parts, num_parts)
    part = copy.copy(dataset)
    part.rows, part.targets = dataset.rows[keep], dataset.targets[keep]
    part.images, part.boxes = dataset.images[keep], dataset.boxes[keep]
    return part


def _check_positive(name, value, kind=int):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok:
        raise FERError(f"{name} must be a positive {'whole number' if kind is int else 'number'}, got {value!r}")
    return kind(value)


def _load_data(data):
    if isinstance(data, fer_data.FERPlusData):
        return data, data.source.get("cache") or "FERPlusData in memory"
    path = Path(data)
    if not path.exists():
        raise FERError(f"data folder {path} does not exist; prepare one with: "
                       "python -m ferlib prepare --fer fer2013.csv --ferplus fer2013new.csv --out DIR")
    return fer_data.load_cache(path), str(path)


def _seed_everything(seed):
    mx.random.seed(seed)
    np.random.seed(seed % (2 ** 32))


def _epoch_seed(seed, epoch):
    # Dropout of epoch e always draws from the same stream, resumed or not.
    return (seed * 100003 + epoch * 7919 + 1) % (2 ** 31)


def train(data, out_dir, recipe="paper", mode="crossentropy", gpus=None, seed=0, num_workers=0, resume=False,
          amp=False, progress=True, callback=None, kvstore=None, overwrite=False, **changes):
    """Train a FER+ network on ``data`` (a prepared cache or :class:`~ferlib.data.FERPlusData`) and write
    its run folder ``out_dir``; returns ``run_dir``, ``history``, ``best_epoch``, ``best_val_acc``,
    ``devices``, ``config`` and ``stopped_early``.

    ``recipe`` is a name of :data:`RECIPES` or a :class:`Recipe`, altered by ``changes`` named as its
    settings (``lr=0.01``...). ``mode`` is the label scheme of the loss (:data:`ferlib.MODES`; validation
    always uses the majority label, the paper's protocol). ``gpus``: ``"0,1"``, ``"cpu"``, ``"cpu:2"``,
    contexts, or ``None`` for every usable GPU, else the CPU. ``seed`` seeds weights, dropout,
    augmentation and order: CPU runs repeat exactly. ``num_workers`` loader processes; ``amp`` float16
    (GPU only); ``progress`` the devices and a tqdm bar per epoch; ``callback(record)`` after each epoch,
    e.g. :class:`LivePlot`, stops the run by returning True; ``kvstore`` overrides :func:`make_kvstore`.

    A folder that already holds a run is only continued (``resume=True``: same schedule, history and
    data order from ``checkpoint.*``) or replaced (``overwrite=True``, its evaluations too), and it is
    locked (``train.lock``) meanwhile. Bad input (not a cache, an unknown mode, model, schedule or
    optimizer, a missing GPU, ``amp`` on the CPU, a folder in use) is a FERError before anything is written.
    """
    recipe = _checked_recipe(get_recipe(recipe, **changes))
    fer_labels.check_mode(mode)
    fer_data.check_target_blending(_augmentation(recipe), mode)
    loss_fn = fer_losses.get_loss(mode, smoothing=recipe.label_smoothing)  # a mode it does not apply to fails here
    fer_labels.check_target_power(recipe.target_power, mode)  # so does this
    if amp and recipe.sam_rho:
        raise FERError("sharpness-aware minimisation (sam_rho) is not supported with amp: float16 gradients "
                       "that overflow would move the weights to NaN; drop --amp or --sam-rho")
    ctx = _checked_contexts(gpus, amp, recipe.batch_size)
    precision = resolve_cpu_precision(recipe.cpu_precision, ctx)
    data, data_name = _load_data(data)
    if amp:
        from mxnet.contrib import amp as mx_amp
        mx_amp.init()  # before the network is built, as AMP requires
    # Built before anything is written: a wrong model option fails with the list of valid ones.
    net = build_net(recipe.model, recipe.model_kwargs, ctx, seed)
    step_net = bfloat16_view(net) if precision == "bfloat16" else net  # trains net's own weights
    average = recipe_average(net, recipe)  # checks the decay and every
    kv = make_kvstore(kvstore, ctx)
    rank, num_machines = (kv.rank, kv.num_workers) if isinstance(kv, mx.kv.KVStore) else (0, 1)
    run_dir = Path(out_dir) if rank == 0 else Path(out_dir) / "workers" / str(rank)
    fileio.ensure_dir(run_dir)
    with hold_run_lock(run_dir):  # held to the end: no second process may write this folder meanwhile
        config = _run_config(recipe, mode, seed, ctx, data_name, kv, num_machines, precision)
        checkpoint = _start_run_folder(run_dir, config, resume, overwrite, progress)
        train_set, val_data = _training_data(data, recipe, mode, seed, rank, num_machines)
        iters_per_epoch = len(train_set) // recipe.batch_size  # the last partial batch is dropped
        lr_at = make_lr_schedule(recipe.schedule, recipe.lr, recipe.num_epochs, iters_per_epoch,
                                 recipe.warmup_epochs, recipe.lr_steps)
        trainer = make_trainer(net, recipe.lr, recipe.momentum, recipe.wd, kv, amp, recipe.optimizer,
                               recipe.no_wd)
        keeper = _RunKeeper(run_dir, net, trainer, callback, progress, average)
        start_epoch = keeper.resume(checkpoint, ctx)
        share_initial_weights(trainer)
        if progress:
            _say_what_trains(recipe, mode, ctx, gpus, rank, num_machines, config, train_set, val_data, start_epoch)
        train_iter = fer_data.make_loader(train_set, recipe.batch_size, shuffle=True, num_workers=num_workers,
                                          last_batch="discard", seed=seed + 1000003 * rank,  # shards differ
                                          start_epoch=start_epoch)
        fit(net, train_iter, val_data, loss_fn, trainer, ctx, lr_at,
            range(start_epoch, recipe.num_epochs), iters_per_epoch, recipe.batch_size * num_machines,
            recipe.input_size, seed=seed, amp=amp, progress=progress, on_epoch=keeper, average=average,
            normalization=recipe.normalization, validate_last=recipe.validate_last_weights, sam_rho=recipe.sam_rho,
            step_net=step_net)
        keeper.export_best(ctx, recipe.input_size)
        return {"run_dir": str(run_dir), "history": keeper.history, "best_epoch": keeper.best_epoch,
                "best_val_acc": keeper.best_val_acc, "devices": [str(c) for c in ctx], "config": config,
                "stopped_early": keeper.stopped_early and keeper.history[-1]["epoch"] < recipe.num_epochs}


def fit(net, train_iter, val_data, loss_fn, trainer, ctx, lr_at, epochs, iters_per_epoch, step_size, input_size,
        seed=0, amp=False, progress=True, on_epoch=None, average=None, normalization=DEFAULT_NORMALIZATION,
        validate_last=True, sam_rho=0.0, step_net=None):
    """The training loop, d2l style: each epoch one pass of SGD over ``train_iter``, with the learning
    rate ``lr_at(step)``, then the accuracy on ``val_data`` (:class:`ferlib.predict.LabelledFaces`);
    with a :class:`WeightAverage`, updated after every step (or its ``every``-th), that of the average instead,
    and of the last weights as well unless ``validate_last`` is False. ``sam_rho``: see :func:`train_batch`.
    ``step_net``: what the steps run through, if not ``net`` (e.g. :func:`bfloat16_view`).

    ``on_epoch(record)`` is called with each epoch's history record; when it returns True the loop
    stops. Returns the records of the epochs run.
    """
    history = []
    for epoch in epochs:
        mx.random.seed(_epoch_seed(seed, epoch))  # dropout of epoch e always draws from the same stream
        record = _train_epoch(net if step_net is None else step_net, trainer, loss_fn, train_iter, ctx, epoch,
                              epochs.stop, iters_per_epoch, lr_at, step_size, amp, progress, average, sam_rho)
        last = validation_accuracy(net, val_data, input_size, ctx, normalization=normalization) \
            if average is None or validate_last else None
        if average is None:
            record["val_acc"], record["val_acc_last"] = last, None
        else:
            with average.applied():
                record["val_acc"] = validation_accuracy(net, val_data, input_size, ctx, normalization=normalization)
            record["val_acc_last"] = last
        record["seconds"] = time.time() - record.pop("_start")
        record = {key: record[key] for key in HISTORY_KEYS}
        history.append(record)
        if on_epoch is not None and on_epoch(record) is True:
            break
    return history


def _checked_recipe(recipe):
    """``recipe`` after checking every setting; the cosine warm-up filled in."""
    check_schedule(recipe.schedule)
    if recipe.model not in fer_model.list_models():
        raise FERError(f"unknown model {recipe.model!r}; choose one of: {', '.join(fer_model.list_models())}")
    checked = {name: _check_positive(name, getattr(recipe, name))
               for name in ("num_epochs", "batch_size", "input_size")}
    checked["lr"] = _check_positive("lr", recipe.lr, float)
    if not isinstance(recipe.no_wd, bool):
        raise FERError(f"no_wd must be True or False, got {recipe.no_wd!r}")
    if not (isinstance(recipe.sam_rho, (int, float)) and recipe.sam_rho >= 0):
        raise FERError(f"sam_rho must be a number >= 0 (0: plain SGD), got {recipe.sam_rho!r}")
    check_optimizer(recipe.optimizer)
    check_normalization(recipe.normalization)
    _augmentation(recipe)  # an unknown setting fails here, before anything is written
    lr_steps = tuple(int(s) for s in recipe.lr_steps)
    if len(lr_steps) != 2 or not 0 < lr_steps[0] <= lr_steps[1]:
        raise FERError(f"lr_steps must be two epochs, first <= second, got {lr_steps!r}")
    warmup = recipe.warmup_epochs
    if warmup is None:
        warmup = default_warmup_epochs(recipe.num_epochs) if recipe.schedule == "cosine" else 0
    model_kwargs = {"input_size": checked["input_size"], **recipe.model_kwargs}
    if model_kwargs["input_size"] != checked["input_size"]:
        raise FERError(f"model_kwargs input_size {model_kwargs['input_size']} differs from input_size "
                       f"{checked['input_size']}")
    return recipe.replace(lr_steps=lr_steps, warmup_epochs=warmup, model_kwargs=model_kwargs, **checked)


def _checked_contexts(gpus, amp, batch_size):
    ctx = get_contexts(gpus)
    if amp and any(c.device_type != "gpu" for c in ctx):
        raise FERError("mixed precision (amp) needs GPUs: float16 training is not supported on CPU; "
                       "drop --amp or choose GPUs with --gpus")
    if batch_size < len(ctx):
        raise FERError(f"batch_size {batch_size} is smaller than the {len(ctx)} devices it is split over")
    return ctx


def _run_config(recipe, mode, seed, ctx, data_name, kv, num_machines, precision="float32"):
    """The run's ``config.json``: the recipe and where it ran (``cpu_precision``: as it ran, not ``auto``)."""
    return {
        "model": recipe.model, "model_kwargs": recipe.model_kwargs, "mode": mode, "input_size": recipe.input_size,
        "emotions": list(EMOTIONS), "num_epochs": recipe.num_epochs, "batch_size": recipe.batch_size,
        "lr": recipe.lr, "schedule": recipe.schedule, "warmup_epochs": recipe.warmup_epochs,
        "lr_steps": list(recipe.lr_steps), "wd": recipe.wd, "no_wd": recipe.no_wd, "momentum": recipe.momentum,
        "optimizer": recipe.optimizer, "ema_decay": recipe.ema_decay, "ema_every": recipe.ema_every,
        "sam_rho": recipe.sam_rho,
        "label_smoothing": recipe.label_smoothing, "target_power": recipe.target_power,
        "augmentation": dict(recipe.augmentation),
        "normalization": recipe.normalization, "cpu_precision": precision, "seed": seed,
        "devices": [str(c) for c in ctx], "data": data_name,
        "kvstore": kv.type if isinstance(kv, mx.kv.KVStore) else kv, "workers": num_machines,
        "ferlib_version": __version__,
    }


def _augmentation(recipe):
    """The recipe's training distortion: the FER+ paper's with its changes."""
    fields = [f.name for f in dataclasses.fields(Augmentation)]
    unknown = sorted(set(recipe.augmentation) - set(fields))
    if unknown:
        raise FERError(f"augmentation has no setting {', '.join(unknown)}; its settings are: {', '.join(fields)}")
    return dataclasses.replace(FERPLUS_AUGMENTATION, **recipe.augmentation)


def _training_data(data, recipe, mode, seed, rank, num_machines):
    """This machine's share of the training set, and the validation faces with a majority label."""
    train_set = fer_data.FERPlusDataset(data, "train", mode, augment=_augmentation(recipe), size=recipe.input_size,
                                        seed=seed, normalization=recipe.normalization,
                                        target_power=recipe.target_power)
    if len(train_set) < recipe.batch_size * num_machines:
        raise FERError(f"the training split has {len(train_set)} faces in mode {mode!r}, fewer than one batch "
                       f"of {recipe.batch_size}" + (f" per worker ({num_machines})" if num_machines > 1 else ""))
    val_faces = majority_faces(data, "val")
    if len(val_faces.labels) == 0:
        raise FERError("the validation split (PublicTest rows) has no faces with a majority label")
    return _shard(train_set, rank, num_machines), val_faces


def _say_what_trains(recipe, mode, ctx, gpus, rank, num_machines, config, train_set, val_data, start_epoch):
    where = utils.describe_devices(ctx)
    if ctx[0].device_type == "cpu" and utils.num_gpus() == 0 and gpus in (None, "", "auto"):
        where += " (no GPU found)"
    machine = f", worker {rank + 1} of {num_machines} ({config['kvstore']})" if num_machines > 1 else ""
    if config["cpu_precision"] != "float32":
        where += f", steps in {config['cpu_precision']}"
    elif recipe.cpu_precision == "auto" and all(c.device_type == "cpu" for c in ctx):
        where += f", steps in float32 ({cpu.why_not_bfloat16()})"
    print(f"training {recipe.model} ({mode}) on {where}{machine}: {len(train_set)} training faces, "
          f"{len(val_data.labels)} validation faces, epochs {start_epoch + 1}..{recipe.num_epochs}"
          + (f" (resumed after epoch {start_epoch})" if start_epoch else ""), flush=True)


class _RunKeeper:
    """What :func:`train` keeps in the run folder after each epoch of :func:`fit`: the history, the
    best epoch's weights and the checkpoint; then the user's callback decides whether to go on."""

    def __init__(self, run_dir, net, trainer, callback=None, progress=True, average=None):
        self.run_dir, self.net, self.trainer, self.average = run_dir, net, trainer, average
        self.callback, self.progress = callback, progress
        self.history, self.best_epoch, self.best_val_acc, self.stopped_early = [], 0, -1.0, False

    def resume(self, checkpoint, ctx):
        """Load a checkpoint (weights, optimizer, history, best epoch); returns the epoch to start from."""
        if checkpoint is None:
            return 0
        if self.average is None:
            self.net.load_parameters(str(self.run_dir / run.CHECKPOINT_PARAMS), ctx=ctx)
        else:
            self.average.load_with(self.run_dir / run.CHECKPOINT_PARAMS, ctx)
        self.trainer.load_states(str(self.run_dir / run.CHECKPOINT_STATES))
        start_epoch = int(checkpoint["epoch"])
        self.history = read_history(self.run_dir)[:start_epoch]
        self.best_epoch, self.best_val_acc = int(checkpoint["best_epoch"]), float(checkpoint["best_val_acc"])
        return start_epoch

    def __call__(self, record):
        self.history.append(record)
        if record["val_acc"] > self.best_val_acc:
            self.best_epoch, self.best_val_acc = record["epoch"], record["val_acc"]
            with self.average.applied() if self.average is not None else contextlib.nullcontext():
                fileio.atomic_save(self.run_dir / run.BEST_PARAMS, self.net.save_parameters)
            fileio.atomic_write_json(self.run_dir / run.BEST_JSON, {"epoch": self.best_epoch,
                                                                    "val_acc": self.best_val_acc})
        write_history(self.run_dir, self.history)
        save_checkpoint(self.run_dir, self.net, self.trainer, {"epoch": record["epoch"], "best_epoch": self.best_epoch,
                                                               "best_val_acc": self.best_val_acc}, self.average)
        if self.progress:
            print(format_record(record) + (" *" if self.best_epoch == record["epoch"] else ""), flush=True)
        self.stopped_early = self.callback is not None and self.callback(record) is True
        return self.stopped_early

    def export_best(self, ctx, input_size):
        """Export the best epoch's network for serving (model-symbol.json, model-0000.params)."""
        if (self.run_dir / run.BEST_PARAMS).is_file():
            self.net.load_parameters(str(self.run_dir / run.BEST_PARAMS), ctx=ctx)
            fer_model.export_net(self.net, self.run_dir, input_size)
        if self.progress:
            print(f"best validation accuracy {self.best_val_acc:.4f} at epoch {self.best_epoch}; "
                  f"run folder {self.run_dir}", flush=True)


def _train_epoch(net, trainer, loss_fn, train_iter, ctx, epoch, num_epochs, iters_per_epoch, lr_at,
                 step_size, amp, progress, average=None, sam_rho=0.0):
    """One pass over ``train_iter``; returns the partial history record (without val_acc)."""
    from tqdm.auto import tqdm

    start = time.time()
    num_update = epoch * iters_per_epoch
    first_lr = lr_at(num_update)
    loss_sum = correct = None
    seen = 0
    shown = None  # what the bar shows next: the loss sum and faces of its previous refresh
    with tqdm(total=iters_per_epoch, desc=f"epoch {epoch + 1}/{num_epochs}", unit="batch", leave=False,
              disable=not progress, dynamic_ncols=True) as bar:
        for i, (x, y) in enumerate(train_iter):
            trainer.set_learning_rate(lr_at(num_update + i))
            batch_loss, batch_correct = train_batch(net, trainer, loss_fn, x, y, ctx, step_size, amp, sam_rho)
            if average is not None:
                average.update(num_update + i)
            loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
            correct = batch_correct if correct is None else correct + batch_correct
            seen += x.shape[0]
            bar.update()
            if progress and (i % 10 == 9 or i + 1 == iters_per_epoch):
                # Reading a figure waits for the step that made it, which cost 5% of an epoch when it
                # was the latest. Those of the previous refresh, 10 batches back, are long computed.
                if shown is not None:
                    bar.set_postfix(loss=f"{shown[0].asscalar() / shown[1]:.4f}",
                                    images_per_s=f"{shown[1] / (time.time() - start):.0f}")
                shown = (loss_sum, seen)
    if seen == 0:
        raise FERError("the training loader gave no full batch")
    loss_value, correct_value = loss_sum.asscalar(), correct.asscalar()  # waits for the last batch
    seconds = time.time() - start
    return {"epoch": epoch + 1, "loss": float(loss_value / seen), "train_acc": float(correct_value / seen),
            "lr": float(first_lr), "images_per_sec": float(seen / seconds), "_start": start}


# --------------------------------------------------------------------------- command line


def add_commands(subparsers):
    """Add the ``train`` verb to the ``python -m ferlib`` parser."""
    import argparse

    p = subparsers.add_parser(
        "train", help="train a network on a prepared cache (one or many GPUs, or the CPU)",
        description="Train a FER+ network and write its run folder (config, history, best and exported "
                    "weights, checkpoints). Defaults: the FER+ paper's recipe for vgg13. Several machines: "
                    "run the same command with the DMLC_* variables set (see the README).")
    p.add_argument("--data", required=True, help="folder of a prepared cache (python -m ferlib prepare)")
    p.add_argument("--out", required=True, help="run folder, e.g. runs/vgg13-crossentropy")
    p.add_argument("--recipe", default="paper", choices=list(RECIPES),
                   help="named settings, changed by the options below (default: %(default)s, the FER+ paper's)")
    p.add_argument("--mode", default="crossentropy", help=f"label scheme: {', '.join(fer_labels.MODES)} (default: %(default)s)")
    # Each setting below changes the recipe only when given (the recipe owns the defaults).
    p.add_argument("--model", default=None, help=f"network: {', '.join(fer_model.list_models())}")
    p.add_argument("--width", type=float, default=None, help="channel multiplier (vgg13 models, face_resnet)")
    p.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="BatchNorm after each convolution (vgg13 models; default: the model's)")
    p.add_argument("--conv-dropout", type=float, default=None,
                   help="dropout after each pooling (vgg13 models; the paper's 0.25)")
    p.add_argument("--dense-dropout", type=float, default=None,
                   help="dropout after each hidden dense layer (vgg13 models; the paper's 0.5), "
                        "before the output layer (face_resnet)")
    p.add_argument("--antialiased-blocks", type=int, default=None,
                   help="how many of the last blocks pool anti-aliased (vgg13 models; cpu_long_aa's 2)")
    p.add_argument("--pretrained", action="store_true", help="GluonCV backbones: start from ImageNet weights")
    p.add_argument("--epochs", type=int, default=None, help="number of epochs")
    p.add_argument("--batch-size", type=int, default=None, help="batch size per machine, split over its devices")
    p.add_argument("--lr", type=float, default=None, help="learning rate")
    p.add_argument("--schedule", default=None, choices=SCHEDULES,
                   help="ferplus: x0.5 and x0.1 from the --lr-steps epochs; cosine: warm-up, then cosine to 0")
    p.add_argument("--lr-steps", default=None, help="the two epochs of the ferplus schedule, e.g. 20,40")
    p.add_argument("--warmup-epochs", type=int, default=None, help="cosine warm-up epochs (default: a tenth of the epochs, at most 5)")
    p.add_argument("--wd", type=float, default=None, help="weight decay")
    p.add_argument("--momentum", type=float, default=None, help="SGD momentum")
    p.add_argument("--optimizer", default=None, choices=OPTIMIZERS, help="sgd or nag (Nesterov momentum)")
    p.add_argument("--augment", default=None, metavar="NAME=VALUE,...",
                   help="change settings of the recipe's training distortion, e.g. max_angle=0,max_skew=0,max_scale=1 "
                        "(shifts and flips only); settings: max_shift, max_scale, max_angle, max_skew, flip, "
                        "whole_pixels, erase (a probability), mixup (Beta's alpha, e.g. 0.2), "
                        "cutmix (a probability, e.g. 0.5)")
    p.add_argument("--normalization", choices=NORMALIZATIONS, default=None,
                   help="intensity normalisation of the faces: ferplus (the paper's: histogram equalisation, "
                        "minus the fitted plane) or standard (minus the mean, over the standard deviation)")
    p.add_argument("--ema-decay", type=float, default=None,
                   help="validate and keep a moving average of the weights with this decay per step (0: off)")
    p.add_argument("--ema-every", type=int, default=None,
                   help="update that average every N steps, the decay compounded over them (default: the recipe's)")
    p.add_argument("--sam-rho", type=float, default=None,
                   help="sharpness-aware minimisation: take each step's gradient this far uphill "
                        "(e.g. 0.05; twice the compute per batch; 0: off)")
    p.add_argument("--no-wd", action="store_true", default=None,
                   help="no weight decay on BatchNorm's gamma and beta and on biases (default: the recipe's)")
    p.add_argument("--label-smoothing", type=float, default=None,
                   help="train towards (1 - S) t + S / 8 instead of each target t (e.g. 0.1; 0: off)")
    p.add_argument("--target-power", type=float, default=None,
                   help="train towards each crowd distribution raised to this power and renormalised "
                        "(e.g. 2: sharper; 1: as voted; probability and crossentropy only)")
    p.add_argument("--validate-last-weights", action=argparse.BooleanOptionalAction, default=None,
                   help="with --ema-decay, also validate the last weights every epoch (default: the recipe's)")
    p.add_argument("--input-size", type=int, default=None, help="network input side in pixels")
    p.add_argument("--cpu-precision", choices=utils.CPU_PRECISIONS, default=None,
                   help="what training steps on the CPU compute in: float32, bfloat16 (AVX-512 BF16 CPUs: about 1.5x "
                        "faster on AMD Zen 4, 2x with Intel's AMX) or auto (bfloat16 where it is the faster; "
                        "default: the recipe's)")
    p.add_argument("--gpus", default=None,
                   help="GPU ids such as 0,1; 'cpu'; 'cpu:N' for N CPU contexts; default: all GPUs, else CPU")
    p.add_argument("--seed", type=int, default=0, help="random seed; CPU runs repeat exactly (default: %(default)s)")
    p.add_argument("--workers", type=int, default=0, help="data loader processes (default: %(default)s)")
    p.add_argument("--kvstore", default=None, help="override the kvstore (local, device, dist_sync, ...)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--amp", action="store_true", help="mixed precision float16 (GPU only)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train_command)


def recipe_from_args(args):
    """The :class:`Recipe` the command line asks for: ``--recipe`` with the options given changed."""
    base = get_recipe(args.recipe)
    changes = {name: value for name, value in (
        ("model", args.model), ("num_epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr),
        ("schedule", args.schedule), ("warmup_epochs", args.warmup_epochs), ("wd", args.wd), ("no_wd", args.no_wd),
        ("momentum", args.momentum), ("optimizer", args.optimizer), ("ema_decay", args.ema_decay),
        ("ema_every", args.ema_every), ("sam_rho", args.sam_rho), ("label_smoothing", args.label_smoothing),
        ("target_power", args.target_power), ("input_size", args.input_size),
        ("normalization", args.normalization),
        ("validate_last_weights", args.validate_last_weights), ("cpu_precision", args.cpu_precision))
        if value is not None}
    if args.augment is not None:  # changes the recipe's distortion, setting by setting
        changes["augmentation"] = {**base.augmentation, **_parse_augment(args.augment)}
    if args.lr_steps is not None:
        try:
            changes["lr_steps"] = tuple(int(s) for s in args.lr_steps.split(","))
        except ValueError:
            raise FERError(f"--lr-steps {args.lr_steps!r}: give two epochs such as 20,40") from None
    model_kwargs = {} if "model" in changes and changes["model"] != base.model else dict(base.model_kwargs)
    for option, value in (("width", args.width), ("batch_norm", args.batch_norm),
                          ("conv_dropout", args.conv_dropout), ("dense_dropout", args.dense_dropout),
                          ("antialiased_blocks", args.antialiased_blocks)):
        if value is not None:
            model_kwargs[option] = value
    if args.pretrained:
        model_kwargs["pretrained"] = True
    return base.replace(model_kwargs=model_kwargs, **changes)


#: The on/off settings of :class:`ferlib.transforms.Augmentation`.
_AUGMENT_SWITCHES = ("flip", "whole_pixels")


def _parse_augment(text):
    """``"max_angle=0,flip=false"`` as ``{"max_angle": 0.0, "flip": False}``."""
    from .cli import parse_assignments

    def convert(name, value):
        try:
            return {"true": True, "false": False}[value.lower()] if name in _AUGMENT_SWITCHES else float(value)
        except (KeyError, ValueError):
            raise FERError(f"--augment {name + '=' + value!r}: {name} takes "
                           f"{'true or false' if name in _AUGMENT_SWITCHES else 'a number'}") from None

    return parse_assignments(text, "--augment", convert, "max_angle=0,max_skew=0")


def _train_command(args):
    recipe = recipe_from_args(args)
    ctx = get_contexts(args.gpus)
    gpus_found = utils.num_gpus()
    print(f"devices: {utils.describe_devices(ctx)}"
          + ("" if gpus_found or args.gpus not in (None, "", "auto") else " (no GPU found, using the CPU)"),
          flush=True)
    result = train(args.data, args.out, recipe, mode=args.mode, gpus=ctx, seed=args.seed, num_workers=args.workers,
                   resume=args.resume, amp=args.amp, progress=not args.quiet, kvstore=args.kvstore,
                   overwrite=args.overwrite)
    print(f"best validation accuracy {result['best_val_acc']:.4f} (epoch {result['best_epoch']}); "
          f"run folder: {result['run_dir']}")
    return 0
