"""The synthetic FER-format dataset: exact file formats, determinism, votes and
faces whose expression a simple classifier can see."""
import argparse
import csv
import re

import cv2
import numpy as np
import pytest

from ferlib import synth
from ferlib.errors import FERError
from ferlib.labels import EMOTIONS, VOTE_COLUMNS, make_targets
from ferlib.transforms import preprocess

N = 2000
SEED = 11
USAGES = ("Training", "PublicTest", "PrivateTest")
FERPLUS_HEADER = ["Usage", "Image name", "neutral", "happiness", "surprise", "sadness",
                  "anger", "disgust", "fear", "contempt", "unknown", "NF"]


@pytest.fixture(scope="module")
def faces():
    return synth.make_faces(N, seed=SEED)


@pytest.fixture(scope="module")
def written(faces, tmp_path_factory):
    """The two CSV files of ``faces``, parsed back with the csv module."""
    fer_path, ferplus_path = synth.write_faces(faces, tmp_path_factory.mktemp("synth"))
    with open(fer_path, newline="") as f:
        fer_rows = list(csv.reader(f))
    with open(ferplus_path, newline="") as f:
        ferplus_rows = list(csv.reader(f))
    return fer_path, ferplus_path, fer_rows, ferplus_rows


@pytest.fixture(scope="module")
def pixels(written):
    """The pixel values of fer2013.csv as one int64 array (rows, 2304), or None if ragged."""
    rows = written[2][1:]
    values = np.array(" ".join(row[1] for row in rows).split(" "), dtype=np.int64)
    return values.reshape(len(rows), -1) if values.size == len(rows) * 48 * 48 else None


def test_fer2013_csv_format(written, pixels):
    fer_path, _, rows, _ = written
    assert fer_path.name == "fer2013.csv"
    assert rows[0] == ["emotion", "pixels", "Usage"]
    assert len(rows) == N + 1
    # 2304 space-separated plain decimal numbers per row.
    one_row = re.compile(r"(?:0|[1-9]\d{0,2})(?: (?:0|[1-9]\d{0,2})){2303}")
    for emotion, pixel_text, usage in rows[1:]:
        assert re.fullmatch(r"[0-6]", emotion)
        assert one_row.fullmatch(pixel_text)
        assert usage in USAGES
    assert pixels is not None and pixels.min() >= 0 and pixels.max() <= 255
    raw = fer_path.read_bytes()
    assert raw.endswith(b"\n") and b"\r" not in raw


def test_fer2013new_csv_format(written):
    _, ferplus_path, fer_rows, rows = written
    assert ferplus_path.name == "fer2013new.csv"
    assert rows[0] == FERPLUS_HEADER
    assert len(rows) == N + 1
    blank = 0
    for index, row in enumerate(rows[1:]):
        assert len(row) == 12
        assert row[0] == fer_rows[index + 1][2], "both files list the same rows in the same order"
        if row[1] == "":
            blank += 1
        else:
            assert row[1] == f"fer{index:07d}.png"
        votes = [int(v) for v in row[2:]]
        assert min(votes) >= 0 and sum(votes) == 10
    # About 0.5% not-a-face rows, as in FER+.
    assert 0 < blank <= 0.02 * N
    raw = ferplus_path.read_bytes()
    assert raw.endswith(b"\n") and b"\r" not in raw


def test_usage_order_and_shares(written):
    usage = [row[0] for row in written[3][1:]]
    rank = [USAGES.index(u) for u in usage]
    assert rank == sorted(rank), "all Training rows, then PublicTest, then PrivateTest"
    counts = [usage.count(u) for u in USAGES]
    assert counts[0] == pytest.approx(0.8 * N, abs=2)
    assert counts[1] == pytest.approx(0.1 * N, abs=2)
    assert counts[2] == pytest.approx(0.1 * N, abs=2)


def test_csv_holds_the_generated_arrays(faces, written, pixels):
    _, _, fer_rows, ferplus_rows = written
    np.testing.assert_array_equal(pixels.reshape(-1, 48, 48), faces.images)
    np.testing.assert_array_equal([int(row[0]) for row in fer_rows[1:]], faces.fer_emotion)
    np.testing.assert_array_equal([[int(v) for v in row[2:]] for row in ferplus_rows[1:]], faces.votes)
    assert [row[1] for row in ferplus_rows[1:]] == faces.names
    assert list(faces.usage) == [row[0] for row in ferplus_rows[1:]]


def test_array_shapes_and_types(faces):
    assert faces.images.shape == (N, 48, 48) and faces.images.dtype == np.uint8
    assert faces.votes.shape == (N, len(VOTE_COLUMNS))
    assert faces.usage.shape == faces.drawn.shape == faces.fer_emotion.shape == (N,)
    assert len(faces.names) == N
    assert set(np.unique(faces.drawn)) <= set(range(-1, len(EMOTIONS)))


def test_fer2013_codes_follow_the_drawn_emotion(faces):
    is_face = faces.drawn >= 0
    expected = np.array([synth.FER2013_CODE[EMOTIONS[c]] for c in faces.drawn[is_face]])
    np.testing.assert_array_equal(faces.fer_emotion[is_face], expected)


def test_same_seed_same_bytes_other_seed_other_files(tmp_path):
    first = synth.write_synthetic(tmp_path / "a", n=150, seed=3)
    again = synth.write_synthetic(tmp_path / "b", n=150, seed=3)
    other = synth.write_synthetic(tmp_path / "c", n=150, seed=4)
    for path_a, path_b, path_c in zip(first, again, other):
        assert path_a.read_bytes() == path_b.read_bytes()
        assert path_a.read_bytes() != path_c.read_bytes()


def test_not_a_face_rows(faces):
    not_face = faces.drawn < 0
    assert not_face.sum() == round(synth.NOT_A_FACE_SHARE * N)
    names = np.array(faces.names)
    assert (names[not_face] == "").all() and (names[~not_face] != "").all()
    nf_votes = faces.votes[not_face, VOTE_COLUMNS.index("NF")]
    assert (nf_votes >= 8).all(), "not-a-face rows get mostly NF votes"
    _, keep = make_targets(faces.votes, "majority")
    assert not keep[not_face].any()


def test_drawn_expression_is_the_majority_label(faces):
    targets, keep = make_targets(faces.votes, "majority")
    np.testing.assert_array_equal(targets[keep].argmax(axis=1), faces.drawn[keep])
    # A small share of faces are genuinely ambiguous: the majority scheme drops them.
    dropped_faces = (~keep & (faces.drawn >= 0)).sum()
    assert 0.01 * N < dropped_faces < 0.12 * N


def test_every_emotion_in_every_usage(faces):
    targets, keep = make_targets(faces.votes, "majority")
    labels = targets.argmax(axis=1)
    for usage in USAGES:
        counts = np.bincount(labels[keep & (faces.usage == usage)], minlength=len(EMOTIONS))
        assert (counts > 0).all(), f"{usage}: {dict(zip(EMOTIONS, counts))}"
    shares = np.bincount(labels[keep], minlength=len(EMOTIONS)) / keep.sum()
    assert shares.min() >= 0.06
    # Mildly imbalanced like FER+: neutral and happiness are the most common.
    assert set(np.argsort(shares)[-2:]) == {EMOTIONS.index("neutral"), EMOTIONS.index("happiness")}


def test_votes_look_like_a_crowd(faces):
    is_face = faces.drawn >= 0
    votes = faces.votes[is_face]
    drawn = faces.drawn[is_face]
    main_votes = votes[np.arange(len(drawn)), drawn]
    assert 0.1 < (main_votes == 10).mean() < 0.5, "mostly some spread, sometimes unanimous"
    assert 0.1 < (votes[:, VOTE_COLUMNS.index("unknown")] > 0).mean() < 0.6
    # The spread goes to confusable emotions: surprise faces' runner-up is fear, and back.
    for emotion, confused_with in (("surprise", "fear"), ("fear", "surprise"), ("anger", "disgust")):
        rows = votes[drawn == EMOTIONS.index(emotion)][:, :len(EMOTIONS)].copy()
        rows[:, EMOTIONS.index(emotion)] = 0
        assert rows.sum(axis=0).argmax() == EMOTIONS.index(confused_with)


def test_images_vary(faces):
    images = faces.images[faces.drawn >= 0].reshape(-1, 48 * 48).astype(np.float64)
    assert len(np.unique(images, axis=0)) == len(images)
    assert np.median(images.std(axis=1)) > 15, "faces have contrast"
    assert np.ptp(images.mean(axis=1)) > 80, "tones vary from face to face"


def test_nearest_class_mean_sees_the_expressions(faces):
    """A nearest-class-mean classifier on gradient histograms (HOG) of the
    preprocessed faces beats always-the-commonest-class by a wide margin on
    held-out rows: the drawn expressions, not noise, tell the classes apart.
    (On raw pixels the random position, size and rotation blur the class means.)"""
    targets, keep = make_targets(faces.votes, "majority")
    labels = targets.argmax(axis=1)
    normalized = preprocess(faces.images, size=48)[:, 0]
    grey = np.clip(normalized * 40 + 128, 0, 255).astype(np.uint8)
    hog = cv2.HOGDescriptor((48, 48), (16, 16), (8, 8), (8, 8), 9)
    x = np.stack([hog.compute(image).ravel() for image in grey])
    train = keep & (faces.usage == "Training")
    held_out = keep & (faces.usage != "Training")
    means = np.stack([x[train & (labels == c)].mean(axis=0) for c in range(len(EMOTIONS))])
    predicted = (x[held_out] @ means.T - 0.5 * (means * means).sum(axis=1)).argmax(axis=1)
    accuracy = (predicted == labels[held_out]).mean()
    chance = np.bincount(labels[train]).max() / train.sum()  # always the commonest class
    assert accuracy > chance + 0.35, f"nearest class mean {accuracy:.2f}, majority class {chance:.2f}"


def test_synth_command(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    synth.add_commands(parser.add_subparsers())
    args = parser.parse_args(["synth", "--out", str(tmp_path / "out"), "--n", "40", "--seed", "2"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "fer2013.csv" in printed and "fer2013new.csv" in printed and "40 rows" in printed
    with open(tmp_path / "out" / "fer2013new.csv", newline="") as f:
        assert len(list(csv.reader(f))) == 41
    defaults = parser.parse_args(["synth", "--out", "x"])
    assert (defaults.n, defaults.seed) == (4000, 0)
    with pytest.raises(SystemExit):
        parser.parse_args(["synth"])  # --out is required


def test_bad_count_or_seed_is_a_clear_error():
    with pytest.raises(FERError, match="at least 1"):
        synth.make_faces(0)
    with pytest.raises(FERError, match="non-negative"):
        synth.make_faces(10, seed=-1)
