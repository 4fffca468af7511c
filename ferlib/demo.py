"""The main job behind ``make demo``: the whole pipeline, end to end.

Uses the real FER+ files when ``fer2013.csv`` (or ``.csv.gz`` / Kaggle's
``fer2013.tar.gz``) and ``fer2013new.csv`` are in the data folder, otherwise
the built-in synthetic set, which it generates first.
"""
from pathlib import Path

from . import data as fer_data
from . import synth

FER_NAMES = ("fer2013.csv", "fer2013.csv.gz", "fer2013.tar.gz")
FERPLUS_NAME = "fer2013new.csv"


def find_real_files(folder):
    """``(fer_path, ferplus_path)`` when both real files are in ``folder``, else ``None``."""
    folder = Path(folder)
    ferplus = folder / FERPLUS_NAME
    for name in FER_NAMES:
        if (folder / name).is_file() and ferplus.is_file():
            return folder / name, ferplus
    return None


def prepare_inputs(data_dir, out_dir, synthetic_faces=4000, seed=0):
    """Prepare the cache in ``out_dir/cache`` from real files if present, else synthetic ones.

    Returns ``(cache_dir, data, is_real)``.
    """
    out_dir = Path(out_dir)
    real = find_real_files(data_dir)
    if real:
        fer_path, ferplus_path = real
        print(f"real FER+ files found in {data_dir}: {fer_path.name}, {ferplus_path.name}")
    else:
        print(f"no fer2013.csv + fer2013new.csv in {data_dir}: using the built-in synthetic set "
              f"({synthetic_faces} faces, seed {seed})")
        fer_path, ferplus_path = synth.write_synthetic(out_dir / "synthetic", n=synthetic_faces, seed=seed)
    cache_dir = out_dir / ("cache-real" if real else "cache-synthetic")
    data = fer_data.prepare(fer_path, ferplus_path, cache_dir)
    return cache_dir, data, bool(real)


def run_demo(data_dir="data", out_dir="build/demo", synthetic_faces=4000, seed=0):
    cache_dir, data, is_real = prepare_inputs(data_dir, out_dir, synthetic_faces, seed)
    print(f"\nprepared {'real FER+' if is_real else 'synthetic'} data in {cache_dir}: {data!r}\n")
    print(fer_data.format_summary(data.summary()))
    return 0


def add_commands(subparsers):
    p = subparsers.add_parser("demo", help="run the whole pipeline (what `make demo` does)")
    p.add_argument("--data", default="data", help="folder that may hold the real fer2013.csv + fer2013new.csv")
    p.add_argument("--out", default="build/demo", help="output folder")
    p.add_argument("--synthetic-faces", type=int, default=4000, help="size of the synthetic set when no real data")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lambda a: run_demo(a.data, a.out, a.synthetic_faces, a.seed))
