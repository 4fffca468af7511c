"""Reading, checking and joining the two FER files; the cache; Gluon datasets."""
import gzip
import io
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from ferlib import FERError, data
from ferlib.errors import DataFormatError

FER_HEADER = "emotion,pixels,Usage"
PLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"


def pixel_text(seed):
    return " ".join(map(str, np.random.default_rng(seed).integers(0, 256, 2304)))


def write_pair(folder, rows=6, fer_lines=None, plus_lines=None):
    """Small valid fer2013.csv + fer2013new.csv; *_lines override the data lines."""
    usages = ["Training"] * (rows - 2) + ["PublicTest", "PrivateTest"]
    if fer_lines is None:
        fer_lines = [f"{i % 7},{pixel_text(i)},{u}" for i, u in enumerate(usages)]
    if plus_lines is None:
        plus_lines = [f"{u},fer{i:07d}.png,{10 - i % 4},{i % 4},0,0,0,0,0,0,0,0" for i, u in enumerate(usages)]
    fer, plus = folder / "fer2013.csv", folder / "fer2013new.csv"
    fer.write_text("\n".join([FER_HEADER] + fer_lines) + "\n")
    plus.write_text("\n".join([PLUS_HEADER] + plus_lines) + "\n")
    return fer, plus


def test_read_plain_gzip_and_kaggle_tar(tmp_path):
    fer, _ = write_pair(tmp_path)
    images, usage = data.read_fer2013(fer)
    assert images.shape == (6, 48, 48) and images.dtype == np.uint8
    assert usage.tolist() == ["Training"] * 4 + ["PublicTest", "PrivateTest"]
    assert images[2].ravel().tolist() == list(map(int, pixel_text(2).split()))

    gz = tmp_path / "fer2013.csv.gz"
    gz.write_bytes(gzip.compress(fer.read_bytes()))
    tgz = tmp_path / "fer2013.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(fer, arcname="fer2013/fer2013.csv")
    for path in (gz, tgz):
        other, other_usage = data.read_fer2013(path)
        assert np.array_equal(other, images) and np.array_equal(other_usage, usage)
    _, _, emotion = data.read_fer2013(fer, with_emotion=True)
    assert emotion.tolist() == [i % 7 for i in range(6)]


def test_odd_spacing_is_tolerated(tmp_path):
    text = pixel_text(0).replace(" ", "  ", 3)
    fer, _ = write_pair(tmp_path, rows=3, fer_lines=[f"0, {text} ,Training", f"1,{pixel_text(1)},PublicTest",
                                                     f"2,{pixel_text(2)},PrivateTest"])
    images, _ = data.read_fer2013(fer)
    assert images[0].ravel().tolist() == list(map(int, pixel_text(0).split()))


@pytest.mark.parametrize("bad_row, message", [
    ("0,{short},Training", r"row 3 \(line 4\): has 2303 pixel values, expected 2304"),
    ("0,{nonnumeric},Training", r"row 3 \(line 4\): pixel value 'x12' is not an integer"),
    ("0,{big},Training", r"row 3 \(line 4\): pixel value 256 is outside 0..255"),
    ("0,{ok},Holdout", r"row 3 \(line 4\): unknown usage 'Holdout'"),
    ("9,{ok},Training", r"row 3 \(line 4\): emotion 9 is outside 0..6"),
    ("0,{ok}", r"row 3 \(line 4\): has 2 fields"),
])
def test_bad_fer_rows_name_file_and_row(tmp_path, bad_row, message):
    ok = pixel_text(9)
    parts = ok.split()
    row = bad_row.format(short=" ".join(parts[:-1]), nonnumeric=" ".join(parts[:5] + ["x12"] + parts[6:]),
                         big=" ".join(parts[:-1] + ["256"]), ok=ok)
    lines = [f"0,{pixel_text(i)},Training" for i in range(2)] + [row] + [f"0,{pixel_text(4)},PrivateTest"]
    fer, _ = write_pair(tmp_path, fer_lines=lines)
    with pytest.raises(DataFormatError, match=r"fer2013\.csv, " + message):
        data.read_fer2013(fer)


def test_bad_headers_empty_and_missing_files(tmp_path):
    fer, plus = write_pair(tmp_path)
    fer.write_text("label,pixels,Usage\n0,1 2,Training\n")
    with pytest.raises(DataFormatError, match=r"fer2013\.csv.*wrong header 'label,pixels,Usage'"):
        data.read_fer2013(fer)
    fer.write_text("")
    with pytest.raises(DataFormatError, match=r"fer2013\.csv: is empty"):
        data.read_fer2013(fer)
    fer.write_text(FER_HEADER + "\n")
    with pytest.raises(DataFormatError, match="no data rows"):
        data.read_fer2013(fer)
    with pytest.raises(DataFormatError, match=r"nothere\.csv: no such file"):
        data.read_fer2013(tmp_path / "nothere.csv")
    (tmp_path / "broken.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataFormatError, match=r"broken\.csv\.gz: cannot be read"):
        data.read_fer2013(tmp_path / "broken.csv.gz")
    plus.write_text(PLUS_HEADER.replace("NF", "notface") + "\n")
    with pytest.raises(DataFormatError, match=r"fer2013new\.csv.*wrong header"):
        data.read_ferplus(plus)


@pytest.mark.parametrize("bad_row, message", [
    ("Training,fer0000002.png,4,x,0,0,0,0,0,0,0,0", r"row 3 \(line 4\): vote happiness='x'"),
    ("Training,fer0000002.png,4,-1,0,0,0,0,0,0,0,0", r"row 3 \(line 4\): has a negative vote"),
    ("Training,fer0000002.png,4,1,0,0,0,0,0,0,0", r"row 3 \(line 4\): has 11 fields, expected 12"),
])
def test_bad_vote_rows_name_file_and_row(tmp_path, bad_row, message):
    lines = [f"Training,fer{i:07d}.png,10,0,0,0,0,0,0,0,0,0" for i in range(2)] + [bad_row]
    _, plus = write_pair(tmp_path, rows=3, plus_lines=lines)
    with pytest.raises(DataFormatError, match=r"fer2013new\.csv, " + message):
        data.read_ferplus(plus)


def test_join_checks_row_count_and_usage(tmp_path):
    fer, plus = write_pair(tmp_path)
    lines = plus.read_text().splitlines()
    plus.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataFormatError, match="has 5 data rows but fer2013.csv has 6"):
        data.join(fer, plus)
    lines[2] = lines[2].replace("Training", "PublicTest", 1)
    plus.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"fer2013new\.csv, row 2 \(line 3\): usage 'PublicTest' differs"):
        data.join(fer, plus)


def test_join_drops_rows_without_image_name(tmp_path):
    fer, plus = write_pair(tmp_path)
    lines = plus.read_text().splitlines()
    lines[3] = lines[3].replace("fer0000002.png", "")
    plus.write_text("\n".join(lines) + "\n")
    images, usage, names, votes, _ = data.join(fer, plus)
    assert len(images) == 5 and "fer0000002.png" not in names
    assert np.array_equal(images[2], data.read_fer2013(fer)[0][3])


def test_prepare_writes_cache_and_leaves_nothing_on_failure(tmp_path):
    fer, plus = write_pair(tmp_path)
    out = tmp_path / "cache"
    prepared = data.prepare(fer, plus, out, progress=False)
    loaded = data.load_cache(out)
    assert np.array_equal(loaded.images, prepared.images) and np.array_equal(loaded.votes, prepared.votes)
    assert (out / "summary.json").is_file()

    bad_out = tmp_path / "bad"
    plus.write_text(PLUS_HEADER + "\n")
    with pytest.raises(DataFormatError):
        data.prepare(fer, plus, bad_out, progress=False)
    assert not bad_out.exists() or not any(bad_out.iterdir())
    with pytest.raises(FERError, match="not a prepared FER\\+ cache"):
        data.load_cache(bad_out)


def test_cli_prepare_prints_summary_and_clear_errors(tmp_path):
    fer, plus = write_pair(tmp_path)
    cmd = [sys.executable, "-m", "ferlib", "prepare", "--fer", str(fer), "--ferplus", str(plus),
           "--out", str(tmp_path / "c")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "crossentropy" in done.stdout and "neutral" in done.stdout and "total" in done.stdout
    cmd[5] = str(tmp_path / "missing.csv")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and "missing.csv: no such file" in done.stderr
    assert "Traceback" not in done.stderr


def test_dataset_items_and_splits(synthetic_cache):
    cache = data.load_cache(synthetic_cache)
    for split in data.SPLITS:
        ds = data.FERPlusDataset(cache, split, "majority")
        assert 0 < len(ds) <= len(cache.split_indices(split))
    train = data.FERPlusDataset(cache, "train", "crossentropy")
    x, y = train[0]
    assert x.shape == (1, 64, 64) and x.dtype == np.float32 and y.shape == (8,)
    np.testing.assert_allclose(y.sum(), 1.0, rtol=1e-6)
    assert np.array_equal(train[0][0], x)  # same key, same draw
    assert not np.allclose(train[len(train)][0], x)  # same face, next epoch: a new draw
    val = data.FERPlusDataset(cache, "val", "majority")
    assert np.array_equal(val[0][0], val[len(val)][0])  # no augmentation on val
    assert set(np.unique(val.targets)) <= {0.0, 1.0}
    with pytest.raises(FERError, match="train, val, test"):
        data.FERPlusDataset(cache, "dev", "majority")
    with pytest.raises(FERError, match="not a prepared"):
        data.FERPlusDataset(synthetic_cache / "nope", "train", "majority")


def test_mixup_blends_the_training_batches_only_and_not_multi_target(synthetic_cache):
    from ferlib.transforms import Augmentation

    cache = data.load_cache(synthetic_cache)
    plain = data.FERPlusDataset(cache, "train", "majority", augment=Augmentation(), seed=2)
    mixed = data.FERPlusDataset(cache, "train", "majority", augment=Augmentation(mixup=1.0), seed=2)
    keys = list(range(64))
    (_, y), (mx_, my) = plain.batch(keys), mixed.batch(keys)
    assert set(np.unique(y)) == {0.0, 1.0} and len(set(np.unique(my))) > 2  # one-hot targets, blended
    np.testing.assert_allclose(my.sum(axis=1), 1, rtol=1e-5)
    assert np.array_equal(mixed.batch(keys)[0], mx_)  # the same keys, the same blend
    with pytest.raises(FERError, match="mixup blends targets, and multi_target's are sets of classes"):
        data.FERPlusDataset(cache, "train", "multi_target", augment=Augmentation(mixup=0.2))
    cut = data.FERPlusDataset(cache, "train", "majority", augment=Augmentation(cutmix=1.0), seed=2)
    cx, cy = cut.batch(keys)
    assert len(set(np.unique(cy))) > 2 and np.array_equal(cut.batch(keys)[0], cx)  # blended, repeatably
    np.testing.assert_allclose(cy.sum(axis=1), 1, rtol=1e-5)
    with pytest.raises(FERError, match="cutmix blends targets, and multi_target's are sets of classes"):
        data.FERPlusDataset(cache, "train", "multi_target", augment=Augmentation(cutmix=0.5))


def test_probability_mode_draws_new_labels_each_epoch(synthetic_cache):
    ds = data.FERPlusDataset(synthetic_cache, "train", "probability")
    soft = np.flatnonzero((ds.targets > 0).sum(axis=1) > 1)
    assert len(soft) > 0
    draws = np.array([[ds[epoch * len(ds) + i][1].argmax() for epoch in range(30)] for i in soft[:10]])
    assert (draws.min(axis=1) != draws.max(axis=1)).any()


def test_loader_epochs_are_new_and_workers_agree(synthetic_cache):
    ds = data.FERPlusDataset(synthetic_cache, "train", "majority", seed=3)
    loader = data.make_loader(ds, batch_size=32, shuffle=True, seed=1)
    first = [x.asnumpy() for x, _ in loader]
    second = [x.asnumpy() for x, _ in loader]
    assert sum(len(b) for b in first) == len(ds)
    assert not np.allclose(first[0], second[0])
    # Worker processes see the same samples as the main process for the same epoch.
    with_workers = data.make_loader(ds, batch_size=32, shuffle=True, seed=1, num_workers=2)
    again = [x.asnumpy() for x, _ in with_workers]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    resumed = data.make_loader(ds, batch_size=32, shuffle=True, seed=1, start_epoch=1)
    assert np.array_equal(next(iter(resumed))[0].asnumpy(), second[0])
