"""Preprocessing throughput: ferlib against the per-image SciPy reference, same run.

    .venv/bin/python bench/bench_preprocess.py [--images 2000] [--size 64]

Every stage gets one core (OpenCV and OpenMP threads set to 1) so the ratio
compares methods, not thread counts; the last line measures the Gluon
DataLoader with worker processes, the configuration training uses. Faces are
the real FER+ training faces when ../shared/data or data/ hold them, else the
built-in synthetic ones.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

import ferlib  # noqa: E402
import scipy_reference  # noqa: E402
from ferlib import data, transforms  # noqa: E402

cv2.setNumThreads(1)


def load_faces(count):
    for folder in (REPO / "data", REPO.parent / "shared" / "data"):
        for name in ("fer2013.csv", "fer2013.csv.gz"):
            if (folder / name).is_file():
                images, usage = data.read_fer2013(folder / name)
                return images[usage == "Training"][:count], f"real FER2013 training faces from {folder}"
    out = Path(tempfile.mkdtemp())
    fer, _ = ferlib.synth.write_synthetic(out, n=count, seed=0)
    return data.read_fer2013(fer)[0], "built-in synthetic faces"


def rate(fn, count, repeat=3):
    """Best images/s over ``repeat`` runs of ``fn`` (which processes ``count`` images)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return count / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=transforms.INPUT_SIZE)
    parser.add_argument("--batch", type=int, default=256, help="batch of the vectorised path")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    args = parser.parse_args()
    faces, source = load_faces(args.images)
    n, size = len(faces), args.size
    print(f"{n} {source}, {size}x{size} output, training augmentation on\n")

    a, a_pinv = scipy_reference.plane_fit_matrices(size, size)
    baseline = rate(lambda: [scipy_reference.distort_and_normalize(f, size, a, a_pinv) for f in faces], n, repeat=1)

    rng = np.random.default_rng(0)
    aug = transforms.FERPLUS_AUGMENTATION

    def vectorised():
        for start in range(0, n, args.batch):
            transforms.preprocess(faces[start:start + args.batch], size=size, augmentation=aug, rng=rng)

    batched = rate(vectorised, n)

    cache = data.FERPlusData(faces, np.tile(np.array([[10, 0, 0, 0, 0, 0, 0, 0, 0, 0]], np.int16), (n, 1)),
                             np.full(n, "Training"), np.array([f"f{i}" for i in range(n)]), np.zeros(n, np.int8))
    dataset = data.FERPlusDataset(cache, "train", "crossentropy", size=size)
    per_batch = rate(lambda: [dataset.batch(range(i, min(i + 64, n))) for i in range(0, n, 64)], n)

    loader = data.make_loader(dataset, batch_size=64, shuffle=True, num_workers=args.workers)
    next(iter(loader))  # start the worker processes outside the timing
    with_workers = rate(lambda: [b for b in loader], n)

    rows = [
        ("SciPy affine_transform + pinv, per image (reference)", baseline),
        (f"ferlib.transforms.preprocess, batches of {args.batch}", batched),
        ("ferlib FERPlusDataset.batch, batches of 64 (+ targets)", per_batch),
        (f"ferlib DataLoader, {args.workers} worker processes", with_workers),
    ]
    print(f"{'method':58s}{'images/s':>10s}{'x reference':>13s}")
    for name, value in rows:
        print(f"{name:58s}{value:10.0f}{value / baseline:13.1f}")


if __name__ == "__main__":
    main()
