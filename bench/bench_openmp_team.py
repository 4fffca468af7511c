"""OpenMP's teams: a recipe's epoch loop before and after an epoch's end (a validation pass and a
checkpoint), with ferlib's serial copies against MXNet's parallel ones, each in a fresh process, same run.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_openmp_team.py [--recipe cpu_long_aa] [--rounds 2]
        [--data build/cache-real]

MXNet copies an array of ``MXNET_CPU_PARALLEL_SIZE`` values or more (200,000 by default) with
OpenMP. Validation copies batches of 256 faces from numpy in the Python thread, which then keeps a
second OpenMP team; with more OpenMP threads than cores libgomp cuts its spinning, and every later
step sleeps and wakes its threads. ``import ferlib`` sets the threshold beyond any array
(:func:`ferlib.cpu.keep_one_openmp_team`); the baseline is MXNet's 200,000. (A checkpoint did the
same, putting weights that validation had left in oneDNN's blocked layout back in order in the
Python thread, until ``WeightAverage.save_with`` let the engine copy them.) Each process times
the recipe's precision's epoch loop (``_train_epoch`` over the real input pipeline, as ``train``
runs it) over ``--batches`` batches, then validates the network once and saves a checkpoint with
the weight average, as ``fit`` does after each epoch, then times the loop again; it counts the
threads and the voluntary context switches. The settings run in turn, the order reversed each
round. Run it on an idle machine, without ``OMP_WAIT_POLICY=PASSIVE`` (``make bench`` unsets it
here), as a training run alone would be. Faces are the cache given with ``--data``, else the built-in synthetic ones.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile

from bench_train_loop import recipe_from_spec, short_epoch, synthetic_cache  # imports ferlib, then mxnet

import ferlib  # noqa: E402
import mxnet as mx  # noqa: E402
from ferlib import losses, predict, train  # noqa: E402

VARIABLE, MXNET_DEFAULT = ferlib.cpu.PARALLEL_COPY_VARIABLE, str(ferlib.cpu.MXNET_PARALLEL_COPY_SIZE)
SETTINGS = {"ferlib (serial copies)": None, f"MXNet's {MXNET_DEFAULT}": MXNET_DEFAULT}


def child(args):
    """In a fresh process: the loop's images/s before and after an epoch's end, as JSON."""
    recipe = recipe_from_spec(args.recipe)
    ctx = [mx.cpu()]
    net = train.build_net(recipe.model, recipe.model_kwargs, ctx)
    bfloat16 = train.resolve_cpu_precision(recipe.cpu_precision, ctx) == "bfloat16"
    step_net = train.bfloat16_view(net) if bfloat16 else net
    trainer = train.make_trainer(net, recipe.lr, recipe.momentum, recipe.wd, optimizer=recipe.optimizer)
    loss_fn = losses.get_loss("crossentropy")
    train_set, val_faces = train._training_data(args.data, recipe, "crossentropy", seed=0, rank=0, num_machines=1)
    average = train.recipe_average(net, recipe)
    loader, iters, lr_at = short_epoch(train_set, recipe, args.batches)

    def loop():
        """images/s of one pass over the short epoch, and the voluntary context switches per batch."""
        switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        record = train._train_epoch(step_net, trainer, loss_fn, loader, ctx, 5, recipe.num_epochs, iters, lr_at,
                                    recipe.batch_size, False, False, average)
        return record["images_per_sec"], (resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - switches) / iters

    def threads():
        return len(os.listdir("/proc/self/task"))

    loop()  # warms up the loader and the layouts
    before, before_switches = loop()
    threads_before = threads()
    predict.validation_accuracy(net, val_faces, recipe.input_size, ctx, normalization=recipe.normalization)
    with tempfile.TemporaryDirectory() as run_dir:
        train.save_checkpoint(run_dir, net, trainer, {"epoch": 1}, average)
    after, after_switches = loop()
    print(json.dumps({"before": before, "after": after, "switches_before": before_switches,
                      "switches_after": after_switches, "threads_before": threads_before,
                      "threads_after": threads(), "precision": "bfloat16" if bfloat16 else "float32"}))


def run_child(args, cache, parallel_size):
    """One measuring process, with MXNet's threshold at ``parallel_size`` (None: ferlib's)."""
    env = {k: v for k, v in os.environ.items() if k != VARIABLE}  # ferlib set it here too
    if parallel_size is not None:
        env[VARIABLE] = parallel_size
    command = [sys.executable, __file__, "--child", "--data", cache, "--recipe", args.recipe,
               "--batches", str(args.batches)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the measuring process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="cpu_long_aa", help="a recipe, with any of train's options (quoted)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the two settings in turn")
    parser.add_argument("--batches", type=int, default=60, help="batches per timed loop")
    parser.add_argument("--data", help="a prepared cache (default: a synthetic one)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    print(f"recipe {args.recipe}, {args.batches} batches per loop, {args.data or 'synthetic faces'}, "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')}\n")
    print(f"{VARIABLE:24s}{'round':>6s}{'before':>9s}{'after':>9s}{'after/before':>14s}"
          f"{'switches/batch':>22s}{'threads':>10s}")
    results = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as folder:
        cache = args.data or synthetic_cache(folder, 4000)
        for round_ in range(args.rounds):
            names = list(SETTINGS) if round_ % 2 == 0 else list(SETTINGS)[::-1]
            for name in names:
                r = run_child(args, cache, SETTINGS[name])
                results[name].append(r)
                print(f"{name:24s}{round_ + 1:6d}{r['before']:9.0f}{r['after']:9.0f}{r['after'] / r['before']:14.2f}"
                      f"{r['switches_before']:11.0f} -> {r['switches_after']:<7.0f}"
                      f"{r['threads_before']:5d} -> {r['threads_after']}", flush=True)
    ours, theirs = (results[name] for name in SETTINGS)
    ratios = sorted(o["after"] / t["after"] for o, t in zip(ours, theirs))
    print(f"\nimages/s after an epoch's end ({ours[0]['precision']} steps), ferlib against MXNet's "
          f"default: x{statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f}) over {len(ratios)} round(s)")


if __name__ == "__main__":
    main()
