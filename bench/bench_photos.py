"""Benchmark the face detectors and the photo path on scenes built from real FER+ test faces.

    python bench/bench_photos.py                          # ../shared/data, 200 scenes, every detector
    python bench/bench_photos.py --data build/cache-real --scenes 50 --run runs/NAME

For each detector that loads here (:data:`ferlib.serving.faces.BACKENDS`), on the same scenes of
:func:`ferlib.scenes.make_scenes`:

* detection: recall by face size and precision (a found FER crop matches a true one at IoU >= 0.5);
* false faces on the scene backgrounds alone (no person in any), at three picture sizes;
* speed: milliseconds per scene, and the ratio to the Haar cascade measured in the same run;
* photo-path accuracy: detect, crop and predict with the network of ``--run`` (default: the
  pretrained one), over every true face with a majority label (a missed face counts as wrong),
  beside the crop-path accuracy of the same faces given as 48x48 crops: the difference is what the
  photo path loses;
* the number of faces found in every real photo (``../shared/data/faces``, scikit-image's
  astronaut, matplotlib's Grace Hopper): each holds exactly one.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"


def test_faces(data_arg):
    """The real FER+ test faces with a majority label: (images (N, 48, 48) uint8, labels)."""
    from ferlib import data as fer_data
    from ferlib.predict import majority_faces

    if data_arg:
        data = fer_data.load_cache(data_arg)
    else:
        cache = REPO / "build" / "cache-real"
        if not fer_data.is_cache(cache):
            if not (SHARED / "fer2013new.csv").is_file():
                print(f"skipped: no real data (give --data CACHE, from python -m ferlib prepare, or put the files "
                      f"in {SHARED}); the scenes are made of real FER+ test faces")
                sys.exit(0)
            fer_data.prepare(SHARED / "fer2013.csv.gz", SHARED / "fer2013new.csv", cache, progress=False)
        data = fer_data.load_cache(cache)
    faces = majority_faces(data, "test")
    return np.asarray(faces.images), np.asarray(faces.labels)


def real_photos():
    """{name: grey image} of every real photo at hand."""
    from ferlib.photos import sample_photos
    from ferlib.serving import decode_image
    from ferlib.serving.handler import to_grey

    photos = sample_photos()
    for path in sorted((SHARED / "faces").glob("photo_*")):
        photos[path.name] = path.read_bytes()
    return {name: to_grey(decode_image(body)) for name, body in photos.items()}


def _number(name, text):
    """A setting's value as int, float or text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="prepared cache of the real FER+ data (default: from ../shared/data)")
    parser.add_argument("--run", default="pretrained", help="run folder for the photo-path accuracy")
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backends", default=None, help="detectors to compare, comma separated (default: all)")
    parser.add_argument("--settings", default="", metavar="NAME=VALUE,...",
                        help="detector settings changed from DEFAULT_DETECTOR, e.g. max_side=320,pad_fraction=0.05")
    args = parser.parse_args()
    from ferlib.cli import parse_assignments

    settings = parse_assignments(args.settings, "--settings", _number, "max_side=320")

    import ferlib  # noqa: F401  (before mxnet)
    from ferlib.scenes import BACKGROUNDS, background, detection_report, make_scenes, match
    from ferlib.serving import FacePredictor
    from ferlib.serving.faces import BACKENDS, FaceDetector, cut_face

    images, labels = test_faces(args.data)
    scenes = make_scenes(images, labels, args.scenes, seed=args.seed)
    print(f"{len(scenes)} scenes (seed {args.seed}), {sum(len(s.crops) for s in scenes)} real FER+ test faces, "
          f"sides {min(s.crops[:, 2].min() for s in scenes if len(s.crops)):.0f}-"
          f"{max(s.crops[:, 2].max() for s in scenes if len(s.crops)):.0f} px")
    predictor = FacePredictor(args.run)
    true_crops = np.concatenate([images[s.rows] for s in scenes])
    true_labels = np.concatenate([s.labels for s in scenes])
    crop_accuracy = float(np.mean(predictor.probabilities(list(true_crops)).argmax(axis=1) == true_labels))
    photos = real_photos()

    rows, baseline_ms = [], None
    if settings:
        print(f"detector settings changed: {settings}")
    for backend in args.backends.split(",") if args.backends else BACKENDS:
        try:
            detector = FaceDetector({**settings, "backend": backend})
        except RuntimeError as err:
            print(f"{backend}: not available here ({err})")
            continue
        found, seconds = [], []
        for scene in scenes:
            start = time.perf_counter()
            boxes = detector.detect(scene.image)
            seconds.append(time.perf_counter() - start)
            found.append(np.array([detector.crop_box(b) for b in boxes]).reshape(-1, 4))
        report = detection_report(scenes, found)
        false_faces = sum(len(detector.detect(background(name, size))) for name in BACKGROUNDS
                          for size in ((320, 240), (640, 480), (1024, 768)))
        correct = 0
        for scene, crops in zip(scenes, found):
            pairs = dict(match(scene.crops, crops))
            if not pairs:
                continue
            probabilities = predictor.probabilities([cut_face(scene.image, crops[f]) for f in pairs.values()])
            correct += int(np.sum(probabilities.argmax(axis=1) == scene.labels[list(pairs)]))
        photo_accuracy = correct / len(true_labels)
        per_photo = {name: len(detector.detect(grey)) for name, grey in photos.items()}
        ms = 1000 * float(np.median(seconds))
        baseline_ms = ms if backend == "haar" else baseline_ms
        rows.append((backend, report, false_faces, ms, photo_accuracy, per_photo))

    print(f"\ncrop-path accuracy of {args.run} on these faces (48x48 crops, no detection): {crop_accuracy:.2%}\n")
    bins = list(rows[0][1]["recall_by_size"])
    print("| detector | recall | " + " | ".join(f"recall {b}" for b in bins) + " | precision | false faces "
          "(30 backgrounds) | ms per scene | vs Haar | photo-path accuracy | lost vs crops | photos with exactly one face |")
    print("|" + " --- |" * (9 + len(bins)))
    for backend, report, false_faces, ms, photo_accuracy, per_photo in rows:
        by_size = " | ".join(f"{r:.1%} ({n})" for r, n in report["recall_by_size"].values())
        ratio = f"{baseline_ms / ms:.1f}x faster" if baseline_ms else "-"
        one = sum(n == 1 for n in per_photo.values())
        print(f"| {backend} | {report['recall']:.1%} | {by_size} | {report['precision']:.1%} | {false_faces} | "
              f"{ms:.1f} | {ratio} | {photo_accuracy:.2%} | {100 * (crop_accuracy - photo_accuracy):.1f} points | "
              f"{one}/{len(per_photo)} |")
    for backend, *_, per_photo in rows:
        wrong = {name: n for name, n in per_photo.items() if n != 1}
        if wrong:
            print(f"{backend}: faces found where there is one: {wrong}")


if __name__ == "__main__":
    main()
