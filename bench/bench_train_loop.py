"""Training-loop throughput: where an epoch of a recipe goes, against a bare step, same run.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_train_loop.py [--recipe cpu [cpu_long_aa ...] [--rounds 3]]
        [--data build/cache-real]
    ... --recipe cpu_long_aa "cpu_long_aa --antialiased-blocks 3"    (a recipe changed as ``train`` would)

The baseline is the bare SGD step on one batch held in memory: forward, loss, backward and update,
nothing else, in float32. Each following row adds one part of what ``ferlib.train.train`` does per
batch, up to the whole ``_train_epoch`` over the real input pipeline, without and with the progress
bar that ``python -m ferlib train`` shows; on a CPU with AVX-512 BF16,
three more rows run the bare step and the whole epoch through ``bfloat16_view`` (the ``cpu`` recipe's
``cpu_precision="auto"``), the step with the first convolution on one input channel and on two
(``two_channel_input``; a line before the table gives their ratio, timed in turn), with Intel's AMX
where ``import ferlib`` switched it on (the header says);
``DNNL_MAX_CPU_ISA=AVX512_CORE_BF16`` in the environment keeps AMX off, for the figures without it.
The last rows time one validation pass, which a run with a weight average makes twice per epoch
when it also validates the last weights. Run it on an idle machine: the ratios are what it is for;
and without ``OMP_WAIT_POLICY=PASSIVE`` (``make bench`` unsets it for this bench), as a training
run alone would be, since sleeping OpenMP threads cost a bfloat16 epoch 1.1-1.3x.
Faces are the cache given with ``--data``, else the built-in synthetic ones. Given several recipes,
it measures each in turn and ends with each row's rate against the first recipe's, from the same
run: what a change of network (``cpu_long_aa`` against ``cpu_long``) costs a step on this machine.
A recipe may carry the options of ``python -m ferlib train`` that change it, in one quoted argument.
A shared host's speed drifts by 10-20% within minutes, as much as such a change costs, so compare
over ``--rounds``: the recipes are measured in turn, the order reversed each round, and each ratio
is the median of the rounds' (their range beside it).
"""
import argparse
import contextlib
import io
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ferlib  # noqa: E402  (the numpy names MXNet needs, before mxnet)
import mxnet as mx  # noqa: E402
from mxnet import autograd  # noqa: E402

from ferlib import data, losses, predict, synth, train  # noqa: E402
from ferlib.cli import build_parser  # noqa: E402


def synthetic_cache(folder, n):
    out = Path(folder)
    fer, ferplus = synth.write_synthetic(out / "raw", n=n, seed=0)
    data.prepare(fer, ferplus, out / "cache", progress=False)
    return str(out / "cache")


def images_per_second(step, batch_size, batches):
    """Images/s of ``batches`` calls of ``step`` after 3 unmeasured ones, waiting for the device."""
    for _ in range(3):
        step()
    mx.nd.waitall()
    start = time.perf_counter()
    for _ in range(batches):
        step()
    mx.nd.waitall()
    return batches * batch_size / (time.perf_counter() - start)


def alternated(step, baseline, batch_size, batches, rounds=8):
    """Sorted images/s ratios of ``step`` to ``baseline``, timed in turn ``rounds`` times each (the
    order swapped every round): the host's drift, up to a sixth within minutes, falls on both alike."""
    ratios = []
    for round_ in range(rounds):
        pair = (step, baseline) if round_ % 2 == 0 else (baseline, step)
        rates = dict(zip(pair, (images_per_second(s, batch_size, batches) for s in pair)))
        ratios.append(rates[step] / rates[baseline])
    return sorted(ratios)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", nargs="+", default=["cpu"],
                        help="one or more recipes, each a name with any of train's options that change it "
                             "(quoted); from the second on, each is compared with the first")
    parser.add_argument("--rounds", type=int, default=1, help="with several recipes: rounds of measuring each in turn")
    parser.add_argument("--data", help="a prepared cache (default: a synthetic one)")
    parser.add_argument("--mode", default="crossentropy")
    parser.add_argument("--batches", type=int, default=60, help="batches timed per row")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cache = args.data or synthetic_cache(folder, 4000)
        # Read before any measuring, so that a wrong one stops the bench at once.
        recipes = {name: recipe_from_spec(name) for name in dict.fromkeys(args.recipe)}
        names = list(recipes)
        measured = {name: [] for name in names}
        for round_ in range(args.rounds if len(names) > 1 else 1):
            for name in names if round_ % 2 == 0 else names[::-1]:
                measured[name].append(dict(measure(args, name, recipes[name], cache)))
    if len(names) > 1:
        compare(measured)


def compare(measured):
    """Each recipe's rows against the first recipe's same row in the same round: the median ratio
    of images/s over the rounds (below 1 is slower), and the range."""
    first, *others = list(measured)
    rounds = len(measured[first])
    print(f"\nagainst {first}, same run, {rounds} round(s) (images/s ratio, median and range; below 1.00 is slower)")
    width = max(26, *(len(name) + 2 for name in others))
    print(f"{'row':60s}" + "".join(f"{name:>{width}s}" for name in others))
    for row in measured[first][0]:
        cells = []
        for name in others:
            ratios = sorted(measured[name][r].get(row, float("nan")) / measured[first][r][row] for r in range(rounds))
            cells.append(f"{statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})")
        print(f"{row:60s}" + "".join(f"{cell:>{width}s}" for cell in cells))


def recipe_from_spec(spec):
    """The recipe of ``spec``: a recipe's name, then any options of ``python -m ferlib train`` that
    change it (``cpu_long_aa --antialiased-blocks 3``), read by train's own parser, which reports
    a wrong one."""
    name, *options = shlex.split(spec)
    args = build_parser().parse_args(["train", "--data", "-", "--out", "-", "--recipe", name, *options])
    return train._checked_recipe(train.recipe_from_args(args))


def short_epoch(train_set, recipe, batches):
    """A short epoch of the real pipeline, about ``batches`` long: the share of one of many workers, as
    distributed training cuts it. Its loader, its number of batches and the recipe's rate schedule."""
    b = recipe.batch_size
    part = train._shard(train_set, 0, max(1, len(train_set) // (batches * b)))
    iters = len(part) // b
    loader = data.make_loader(part, b, shuffle=True, last_batch="discard")
    lr_at = train.make_lr_schedule(recipe.schedule, recipe.lr, recipe.num_epochs, iters,
                                   recipe.warmup_epochs, recipe.lr_steps)
    return loader, iters, lr_at


def measure(args, recipe_name, recipe, cache):
    ctx = [mx.cpu()]
    net = train.build_net(recipe.model, recipe.model_kwargs, ctx)
    trainer = train.make_trainer(net, recipe.lr, recipe.momentum, recipe.wd, optimizer=recipe.optimizer)
    loss_fn = losses.get_loss(args.mode)
    train_set, val_faces = train._training_data(cache, recipe, args.mode, seed=0, rank=0, num_machines=1)
    b = recipe.batch_size
    x, y = (mx.nd.array(a) for a in train_set.batch(range(b)))
    average = train.recipe_average(net, recipe)
    print(f"\nrecipe {recipe_name} ({recipe.model} {recipe.model_kwargs or ''}, "
          f"{recipe.input_size}x{recipe.input_size}, batch {b}), "
          f"{len(train_set)} training faces of {cache}, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')}, "
          f"AMX {'on' if ferlib.cpu.amx_enabled() else 'off' if ferlib.cpu.cpu_has_amx() else 'absent'}\n")

    steps = [0]

    def with_average():
        train.train_batch(net, trainer, loss_fn, x, y, ctx)
        average.update(steps[0])
        steps[0] += 1

    def bare(step_net):
        def step():
            with autograd.record():
                loss = loss_fn(step_net(x), y)
            loss.backward()
            trainer.step(b)
        return step

    rows = [("bare step: forward, loss, backward, update", images_per_second(bare(net), b, args.batches)),
            ("ferlib train_batch (+ loss sum, correct count)",
             images_per_second(lambda: train.train_batch(net, trainer, loss_fn, x, y, ctx), b, args.batches))]
    if average is not None:
        rows.append(("train_batch + weight average update", images_per_second(with_average, b, args.batches)))

    loader, iters, lr_at = short_epoch(train_set, recipe, args.batches)

    def whole_epoch(step_net, progress=False):
        with contextlib.redirect_stderr(io.StringIO()):  # the bar's output, not the rate
            for epoch in range(2):  # the first warms up the loader and the layouts
                record = train._train_epoch(step_net, trainer, loss_fn, loader, ctx, epoch, 2, iters, lr_at, b,
                                            False, progress, average)
        return record["images_per_sec"]

    rows += [("whole epoch loop, input pipeline included (_train_epoch)", whole_epoch(net)),
             ("the same with train's progress bar", whole_epoch(net, progress=True))]
    if ferlib.cpu.cpu_has_bfloat16():
        one, two = (bare(train.bfloat16_view(net, two_channel_input=wide)) for wide in (False, True))
        rows += [("bare step in bfloat16, first convolution on one channel", images_per_second(one, b, args.batches)),
                 ("bare step in bfloat16, on two channels", images_per_second(two, b, args.batches)),
                 ("whole epoch loop in bfloat16 (bfloat16_view)", whole_epoch(train.bfloat16_view(net)))]
        ratios = alternated(two, one, b, args.batches // 3)
        print(f"bfloat16 step, first convolution on two channels against one, {len(ratios)} alternations of "
              f"{args.batches // 3} batches: x{statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})\n")
    else:
        print("(this CPU has no AVX-512 BF16: no bfloat16 rows)")
    ceiling = rows[0][1]
    print(f"{'training, per batch of ' + str(b):60s}{'images/s':>10s}{'x bare':>9s}")
    for name, value in rows:
        print(f"{name:60s}{value:10.0f}{value / ceiling:9.2f}")

    start = time.perf_counter()
    predict.validation_accuracy(net, val_faces, recipe.input_size, ctx, normalization=recipe.normalization)
    seconds = time.perf_counter() - start
    epoch = len(train_set) / rows[-1][1]  # the recipe's precision here: the last row
    passes = 2 if average is not None and recipe.validate_last_weights else 1
    print(f"\nvalidation: {len(val_faces.labels)} faces in {seconds:.1f} s ({len(val_faces.labels) / seconds:.0f} "
          f"images/s), {passes} pass(es) per epoch: {passes * seconds:.1f} s beside {epoch:.0f} s of training")
    return rows


if __name__ == "__main__":
    main()
