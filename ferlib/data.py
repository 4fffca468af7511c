"""FER2013 + FER+ data: reading, joining, the prepared cache, Gluon datasets.

* :func:`read_fer2013` reads Kaggle's ``fer2013.csv`` (plain, ``.gz`` or inside
  ``fer2013.tar.gz``): 48x48 grey faces and the usage of each row.
* :func:`read_ferplus` reads Microsoft's ``fer2013new.csv``: 10 crowd votes per face.
* :func:`prepare` checks and joins the two and writes a cache that loads in
  well under a second; :func:`load_cache` reads it back as :class:`FERPlusData`.
* :class:`FERPlusDataset` and :func:`make_loader` feed a split to Gluon, with
  the FER+ augmentation drawn afresh for every sample in every epoch.

FER+ splits follow the FER2013 usage column: Training is ``train``,
PublicTest is ``val``, PrivateTest is ``test``.
"""
import csv
import gzip
import io
import json
import os
import tarfile
import time
import warnings
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import gluon

from . import labels as fer_labels
from .errors import DataFormatError, FERError
from .transforms import (DEFAULT_NORMALIZATION, FERPLUS_AUGMENTATION, INPUT_SIZE, Augmentation, check_normalization,
                         cut_pairs, mix_pairs, preprocess)
from .fileio import atomic_save, atomic_write_json, ensure_dir
from .formats import (FER2013_CLASSES, FER2013_HEADER, FERPLUS_HEADER, IMAGE_SIDE, PIXELS,  # noqa: F401
                      SPLIT_OF_USAGE, SPLITS, USAGE_OF_SPLIT, USAGES)

CACHE_FILE = "ferplus.npz"
SUMMARY_FILE = "summary.json"
CACHE_VERSION = 1
#: Largest vote count a cell of fer2013new.csv may hold. FER+ asked 10 taggers per
#: face; a bound well above that catches garbage before it wraps around in int16.
MAX_VOTES = 1000
#: Text encoding of both CSV files; ``utf-8-sig`` also accepts a leading byte-order
#: mark, which spreadsheet programs add and which would otherwise spoil the header.
CSV_ENCODING = "utf-8-sig"


# --------------------------------------------------------------------------- reading


def _open_fer2013_text(path):
    """A text stream over fer2013.csv, whether plain, gzip or Kaggle's tar.gz."""
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        try:
            archive = tarfile.open(path)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataFormatError(path, f"not a readable tar archive ({e})") from None
        members = [m for m in archive.getmembers() if m.isfile() and m.name.endswith("fer2013.csv")]
        if not members:
            raise DataFormatError(path, "the archive holds no fer2013.csv")
        return io.TextIOWrapper(archive.extractfile(members[0]), encoding=CSV_ENCODING, newline="")
    if name.endswith(".gz"):
        return gzip.open(path, "rt", encoding=CSV_ENCODING, newline="")
    return open(path, encoding=CSV_ENCODING, newline="")


def _check_path(path):
    path = Path(path)
    if not path.exists():
        raise DataFormatError(path, "no such file")
    if path.is_dir():
        raise DataFormatError(path, "is a folder, not a file")
    return path


def _read_rows(path, opener, expected_header):
    """All data rows of a CSV file after checking its header (rows as lists of str)."""
    try:
        with opener(path) as f:
            rows = _csv_rows(path, f)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, gzip.BadGzipFile) as e:
        raise DataFormatError(path, f"cannot be read as CSV text ({e})") from None
    if not rows:
        raise DataFormatError(path, "is empty")
    header = tuple(h.strip() for h in rows[0])
    if header != tuple(expected_header):
        raise DataFormatError(path, f"wrong header {','.join(header)!r}; expected {','.join(expected_header)!r}", line=1)
    if len(rows) == 1:
        raise DataFormatError(path, "has a header but no data rows")
    return rows[1:]


def _csv_rows(path, text):
    """All rows of a CSV text stream; a CSV error names its data row and line."""
    reader = csv.reader(text)
    rows = []
    try:
        for row in reader:
            rows.append(row)
    except csv.Error as e:
        # len(rows) counts the header, so it is the 1-based number of the failing data row.
        row = len(rows) if rows else None
        raise DataFormatError(path, f"cannot be read as CSV ({e})", row=row, line=reader.line_num) from None
    return rows


def _check_usage(path, usages):
    usages = np.array([u.strip() for u in usages])
    bad = ~np.isin(usages, USAGES)
    if bad.any():
        row = int(np.flatnonzero(bad)[0]) + 1
        raise DataFormatError(path, f"unknown usage {str(usages[row - 1])!r}; expected one of {', '.join(USAGES)}",
                              row=row, line=row + 1)
    return usages


def _parse_pixel_row(path, row_number, text):
    """Slow, careful parse of one pixel string; raises with the row on any problem."""
    parts = text.split()
    if len(parts) != PIXELS:
        raise DataFormatError(path, f"has {len(parts)} pixel values, expected {PIXELS} (48x48)",
                              row=row_number, line=row_number + 1)
    try:
        values = np.array([int(p) for p in parts])
    except ValueError:
        bad = next(p for p in parts if not p.lstrip("-").isdigit())
        raise DataFormatError(path, f"pixel value {bad!r} is not an integer",
                              row=row_number, line=row_number + 1) from None
    out_of_range = (values < 0) | (values > 255)
    if out_of_range.any():
        raise DataFormatError(path, f"pixel value {values[out_of_range][0]} is outside 0..255",
                              row=row_number, line=row_number + 1)
    return values.astype(np.uint8)


def read_fer2013(path, with_emotion=False):
    """Read Kaggle's FER2013 file.

    Parameters
    ----------
    path : str or Path
        ``fer2013.csv``, ``fer2013.csv.gz`` or Kaggle's ``fer2013.tar.gz``.
    with_emotion : bool
        Also return the original 7-class FER2013 label of each row
        (:data:`FER2013_CLASSES`).

    Returns
    -------
    images : ndarray of uint8, shape (N, 48, 48)
    usage : ndarray of str, shape (N,)
        ``Training``, ``PublicTest`` or ``PrivateTest``.
    emotion : ndarray of int8, shape (N,)
        Only with ``with_emotion=True``.

    Raises
    ------
    DataFormatError
        Naming the file and the 1-based data row for a wrong header, a row
        without 2,304 integers in 0..255, an unknown usage or an empty file.
    """
    path = _check_path(path)
    rows = _read_rows(path, _open_fer2013_text, FER2013_HEADER)
    for i, row in enumerate(rows):
        if len(row) != 3:
            raise DataFormatError(path, f"has {len(row)} fields, expected 3 (emotion,pixels,Usage)", row=i + 1, line=i + 2)
    emotion_text, pixel_text, usage_text = zip(*rows)
    usage = _check_usage(path, usage_text)
    try:
        emotion = np.array(emotion_text, dtype=np.int64)
    except ValueError:
        row = next(i for i, e in enumerate(emotion_text) if not e.strip().isdigit()) + 1
        raise DataFormatError(path, f"emotion {emotion_text[row - 1]!r} is not an integer", row=row, line=row + 1) from None
    bad_emotion = (emotion < 0) | (emotion >= len(FER2013_CLASSES))
    if bad_emotion.any():
        row = int(np.flatnonzero(bad_emotion)[0]) + 1
        raise DataFormatError(path, f"emotion {emotion[row - 1]} is outside 0..6", row=row, line=row + 1)

    # Fast path: one C-level parse of all pixels. Per-row separator counts
    # make sure no row borrows values from its neighbour; any doubt about a
    # row sends it to the careful parser, which names the problem.
    pixel_text = [p.strip() for p in pixel_text]
    suspicious = [i for i, p in enumerate(pixel_text) if p.count(" ") != PIXELS - 1]
    for i in suspicious:
        _parse_pixel_row(path, i + 1, pixel_text[i])  # raises unless merely odd spacing
    for i in suspicious:
        pixel_text[i] = " ".join(pixel_text[i].split())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # partial parses are detected below
        try:
            values = np.fromstring(" ".join(pixel_text), dtype=np.int64, sep=" ")
        except ValueError:  # numpy 2 raises where numpy 1 warned and stopped early
            values = np.empty(0, dtype=np.int64)
    if values.size != PIXELS * len(rows) or values.min(initial=0) < 0 or values.max(initial=0) > 255:
        # Something did not parse (e.g. "12a"); find the row and say why.
        for i, p in enumerate(pixel_text):
            _parse_pixel_row(path, i + 1, p)
        raise DataFormatError(path, "pixel values could not be parsed")  # pragma: no cover - defensive
    images = values.astype(np.uint8).reshape(len(rows), IMAGE_SIDE, IMAGE_SIDE)
    if with_emotion:
        return images, usage, emotion.astype(np.int8)
    return images, usage


class FERPlusVotes:
    """The content of ``fer2013new.csv``: usage, image name and votes of each row."""

    def __init__(self, usage, names, votes):
        self.usage, self.names, self.votes = usage, names, votes

    def __len__(self):
        return len(self.usage)

    def __iter__(self):  # allows ``usage, names, votes = read_ferplus(path)``
        return iter((self.usage, self.names, self.votes))


def read_ferplus(path):
    """Read Microsoft's FER+ vote file ``fer2013new.csv``.

    Returns
    -------
    FERPlusVotes
        ``usage`` (N,) str, ``names`` (N,) str (blank where FER+ leaves the
        face out) and ``votes`` (N, 10) int16 in :data:`ferlib.VOTE_COLUMNS`
        order. Unpacks as ``usage, names, votes``.

    Raises
    ------
    DataFormatError
        Naming the file and row for a wrong header, a wrong number of fields,
        a vote that is not a whole number in 0..:data:`MAX_VOTES` (naming its
        column), an unknown usage or an empty file.
    """
    path = _check_path(path)
    rows = _read_rows(path, lambda p: open(p, encoding=CSV_ENCODING, newline=""), FERPLUS_HEADER)
    width = len(FERPLUS_HEADER)
    for i, row in enumerate(rows):
        if len(row) != width:
            raise DataFormatError(path, f"has {len(row)} fields, expected {width}", row=i + 1, line=i + 2)
    usage = _check_usage(path, [r[0] for r in rows])
    names = np.array([r[1].strip() for r in rows])
    votes = _parse_votes(path, [r[2:] for r in rows])
    return FERPlusVotes(usage, names, votes.astype(np.int16))


def _parse_votes(path, vote_text):
    """Votes (N, 10) int64 from their text; each must be a whole number in 0..MAX_VOTES."""
    try:
        votes = np.array(vote_text, dtype=np.int64)
    except (ValueError, OverflowError):  # OverflowError: more digits than int64 holds
        # The slow way, cell by cell: raises at the first bad one, naming it.
        votes = np.array([[_check_vote(path, i + 1, column, value)
                           for column, value in zip(fer_labels.VOTE_COLUMNS, row)]
                          for i, row in enumerate(vote_text)], dtype=np.int64)
    bad = (votes < 0) | (votes > MAX_VOTES)
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        _check_vote(path, i + 1, fer_labels.VOTE_COLUMNS[j], vote_text[i][j])
    return votes


def _check_vote(path, row, column, value):
    """The count of a vote cell; raises, naming file, row, line and column, unless it is in 0..MAX_VOTES."""
    text = value.strip()
    shown = text if len(text) <= 30 else text[:27] + "..."  # a runaway cell must not flood the message
    try:
        count = int(text)
    except ValueError:  # also more than 4300 digits, which int() refuses
        raise DataFormatError(path, f"vote {column}={shown!r} is not a non-negative integer",
                              row=row, line=row + 1) from None
    if count < 0:
        raise DataFormatError(path, f"has a negative vote {column}={shown}", row=row, line=row + 1)
    if count > MAX_VOTES:
        raise DataFormatError(path, f"vote {column}={shown} is larger than {MAX_VOTES} (votes count the "
                                    "taggers of one face)", row=row, line=row + 1)
    return count


def join(fer_path, ferplus_path):
    """Read both files and check that they describe the same faces row by row.

    Returns ``(images, usage, names, votes, fer_emotion)`` for the rows FER+
    keeps (non-blank image name), in file order.
    """
    images, usage, fer_emotion = read_fer2013(fer_path, with_emotion=True)
    return _join_read(fer_path, ferplus_path, images, usage, fer_emotion, read_ferplus(ferplus_path))


# --------------------------------------------------------------------------- cache


class FERPlusData:
    """The prepared FER+ faces: images, votes and usage of every row FER+ keeps.

    Attributes
    ----------
    images : ndarray of uint8, (N, 48, 48)
    votes : ndarray of int16, (N, 10)
    usage : ndarray of str, (N,)
    names : ndarray of str, (N,)
    boxes : ndarray of float32, (N, 4)
        Face box ``[x, y, w, h]`` of each image (FER crops: the whole image).
    fer_emotion : ndarray of int8, (N,)
        The original FER2013 label (:data:`FER2013_CLASSES`).
    source : dict
        Where the data came from.
    """

    def __init__(self, images, votes, usage, names, fer_emotion, boxes=None, source=None):
        self.images, self.votes, self.usage, self.names = images, votes, usage, names
        self.fer_emotion = fer_emotion
        if boxes is None:
            boxes = np.tile(np.array([0, 0, images.shape[2], images.shape[1]], np.float32), (len(images), 1))
        self.boxes = boxes
        self.source = source or {}

    def __len__(self):
        return len(self.images)

    def __repr__(self):
        sizes = ", ".join(f"{s}={len(self.split_indices(s))}" for s in SPLITS)
        return f"FERPlusData({len(self)} faces: {sizes})"

    def split_indices(self, split):
        """Row indices of ``split`` (``train``, ``val`` or ``test``)."""
        return np.flatnonzero(self.usage == USAGE_OF_SPLIT[check_split(split)])

    def targets(self, mode, split=None):
        """``(targets, keep)`` of a label scheme for all rows, or for the rows of ``split``."""
        votes = self.votes if split is None else self.votes[self.split_indices(split)]
        return fer_labels.make_targets(votes, mode)

    def summary(self):
        """Per-scheme, per-split kept rows and per-class counts (plain dict, JSON-ready)."""
        out = {}
        for mode in fer_labels.MODES:
            out[mode] = {}
            for split in SPLITS:
                targets, keep = self.targets(mode, split)
                counts = fer_labels.class_counts(targets, keep)
                out[mode][split] = {"total": int(keep.sum()),
                                    "per_class": dict(zip(fer_labels.EMOTIONS, map(int, counts)))}
        return out


def check_split(split):
    if split not in SPLITS:
        raise FERError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    return split


def prepare(fer_path, ferplus_path, out_dir, progress=True):
    """Validate and join the two files and write the cache to ``out_dir``.

    Writes ``out_dir/ferplus.npz`` (the faces and votes) and
    ``out_dir/summary.json`` (per-scheme counts). Both are written to a
    temporary file first and moved into place, so a failure leaves no cache
    behind. Returns the :class:`FERPlusData`.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    # A context manager, so the bar is closed before an error is reported.
    with tqdm(total=4, desc="prepare FER+", unit="step", disable=not progress) as steps:
        steps.set_postfix_str(f"reading {Path(fer_path).name}")
        images, usage, fer_emotion = read_fer2013(fer_path, with_emotion=True)
        steps.update()
        steps.set_postfix_str(f"reading {Path(ferplus_path).name}")
        plus = read_ferplus(ferplus_path)
        steps.update()
        steps.set_postfix_str("joining")
        images, usage, names, votes, fer_emotion = _join_read(fer_path, ferplus_path, images, usage, fer_emotion, plus)
        data = FERPlusData(images, votes, usage, names, fer_emotion,
                           source={"fer2013": str(fer_path), "ferplus": str(ferplus_path),
                                   "prepared": time.strftime("%Y-%m-%d %H:%M:%S")})
        summary = data.summary()
        steps.update()
        steps.set_postfix_str(f"writing {out_dir}")
        ensure_dir(out_dir)

        def save(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, version=CACHE_VERSION, images=data.images, votes=data.votes, usage=data.usage,
                         names=data.names, fer_emotion=data.fer_emotion, boxes=data.boxes,
                         source=json.dumps(data.source))

        atomic_save(out_dir / CACHE_FILE, save)
        atomic_write_json(out_dir / SUMMARY_FILE, {"faces": len(data), "source": data.source, "schemes": summary})
        steps.update()
    return data


def _join_read(fer_path, ferplus_path, images, usage, fer_emotion, plus):
    if len(plus) != len(images):
        raise DataFormatError(ferplus_path, f"has {len(plus)} data rows but {Path(fer_path).name} has {len(images)}; "
                                            "they must be the same faces in the same order")
    differs = plus.usage != usage
    if differs.any():
        row = int(np.flatnonzero(differs)[0]) + 1
        raise DataFormatError(ferplus_path, f"usage {str(plus.usage[row - 1])!r} differs from {str(usage[row - 1])!r} "
                                            f"in {Path(fer_path).name} at the same row", row=row, line=row + 1)
    named = plus.names != ""
    return images[named], usage[named], plus.names[named], plus.votes[named], fer_emotion[named]


def is_cache(path):
    """True when ``path`` is a folder written by :func:`prepare`."""
    return (Path(path) / CACHE_FILE).is_file()


def load_cache(path):
    """Load a folder written by :func:`prepare` (or ``python -m ferlib prepare``)."""
    path = Path(path)
    if not is_cache(path):
        raise FERError(f"{path} is not a prepared FER+ cache (no {CACHE_FILE}); "
                       "create one with: python -m ferlib prepare --fer fer2013.csv --ferplus fer2013new.csv --out DIR")
    try:
        with np.load(path / CACHE_FILE, allow_pickle=False) as z:
            if int(z["version"]) != CACHE_VERSION:
                raise FERError(f"{path / CACHE_FILE} was written by another ferlib version; prepare it again")
            return FERPlusData(z["images"], z["votes"], z["usage"], z["names"], z["fer_emotion"], z["boxes"],
                               json.loads(str(z["source"])))
    except (OSError, KeyError, ValueError) as e:
        raise FERError(f"{path / CACHE_FILE} is damaged ({e}); prepare it again") from None


def format_summary(summary):
    """The per-scheme, per-split, per-class table as text."""
    lines = []
    width = max(len(e) for e in fer_labels.EMOTIONS)
    for mode, per_split in summary.items():
        lines.append(f"{mode}")
        lines.append("  " + "".ljust(width) + "".join(s.rjust(8) for s in SPLITS))
        for emotion in fer_labels.EMOTIONS:
            lines.append("  " + emotion.ljust(width) + "".join(str(per_split[s]["per_class"][emotion]).rjust(8)
                                                            for s in SPLITS))
        lines.append("  " + "total".ljust(width) + "".join(str(per_split[s]["total"]).rjust(8) for s in SPLITS))
    return "\n".join(lines)


# --------------------------------------------------------------------------- Gluon


def check_target_blending(augmentation, mode):
    """A FERError if ``augmentation`` blends targets that ``mode`` cannot blend."""
    if augmentation is not None and augmentation.blends_targets and mode == "multi_target":
        kind = "mixup" if augmentation.mixup else "cutmix"
        raise FERError(f"{kind} blends targets, and multi_target's are sets of classes, not distributions: "
                       f"use {kind} with crossentropy, probability or majority")


class FERPlusDataset(gluon.data.Dataset):
    """One FER+ split as a Gluon dataset of ``(image, target)`` pairs.

    Parameters
    ----------
    data : FERPlusData or str
        The prepared data, or the folder of a cache.
    split : str
        ``train``, ``val`` or ``test``.
    mode : str
        Label scheme (:data:`ferlib.MODES`); rows the scheme drops are left out.
        Validation and test follow the paper with ``majority``.
    augment : bool or Augmentation, optional
        Apply the FER+ random distortion (or the one given); default: only for ``train``.
    size : int
        Side of the network input.
    seed : int
        Seed of the augmentation and of the probability-mode label draw.
    normalization : str
        Intensity normalisation (:func:`ferlib.transforms.normalize`).
    target_power : float
        The crowd distributions raised to this power and renormalised (:func:`ferlib.labels.sharpen`):
        1 as voted, above 1 sharper. Only the probability and crossentropy schemes have distributions.

    Notes
    -----
    ``dataset[key]`` is ``x`` float32 (1, size, size) and ``y`` float32 (8,),
    the target of the mode in its training form (probability mode: a one-hot
    drawn from the vote distribution; multi_target: the taken-class mask).
    :meth:`batch` gives many at once, vectorised; :func:`make_loader` uses it.
    A key is ``epoch * len(dataset) + index``: plain indices are epoch 0, and
    the random draws depend only on the seed and the keys, so they are
    repeatable and the same in loader worker processes.
    """

    def __init__(self, data, split, mode, augment=None, size=INPUT_SIZE, seed=0, normalization=DEFAULT_NORMALIZATION,
                 target_power=1.0):
        target_power = fer_labels.check_target_power(target_power, mode)
        if not isinstance(data, FERPlusData):
            data = load_cache(data)
        self.split, self.mode = check_split(split), fer_labels.check_mode(mode)
        rows = data.split_indices(split)
        targets, keep = fer_labels.make_targets(data.votes[rows], mode)
        self.rows = rows[keep]
        self.targets = targets[keep] if target_power == 1 else fer_labels.sharpen(targets[keep], target_power)
        self.images = data.images[self.rows]
        self.boxes = data.boxes[self.rows]
        if isinstance(augment, Augmentation):
            self.augmentation = augment
        else:
            self.augmentation = FERPLUS_AUGMENTATION if (split == "train" if augment is None else augment) else None
        check_target_blending(self.augmentation, mode)
        self.size, self.seed, self.normalization = size, seed, check_normalization(normalization)
        self._random = self.augmentation is not None or mode == "probability"

    def __len__(self):
        return len(self.rows)

    @property
    def labels(self):
        """The strongest class of each item (first on ties), int64 (N,)."""
        return self.targets.argmax(axis=1)

    def __getitem__(self, key):
        x, y = self.batch([key])
        return x[0], y[0]

    def batch(self, keys):
        """Inputs (B, 1, size, size) and training targets (B, 8), float32, for sample keys."""
        keys = np.asarray(keys, dtype=np.int64)
        index = keys % len(self.rows)
        rng = np.random.default_rng([self.seed, *keys.tolist()]) if self._random else None
        x = preprocess(self.images[index], self.boxes[index], self.size, self.augmentation, rng, self.normalization)
        y = fer_labels.training_targets(self.targets[index], self.mode, rng)
        if self.augmentation is not None and self.augmentation.mixup:
            x, y = mix_pairs(x, y, rng, self.augmentation.mixup)
        if self.augmentation is not None and self.augmentation.cutmix:
            x, y = cut_pairs(x, y, rng, self.augmentation.cutmix)
        return x, y


class EpochSampler(gluon.data.Sampler):
    """Yields the sample keys of one epoch each time it is iterated.

    A key is ``epoch * length + index``: the dataset recovers both, so every
    epoch draws new augmentations even in loader worker processes, which keep
    their own copy of the dataset. The order is shuffled per epoch from ``seed``.
    """

    def __init__(self, length, shuffle=True, seed=0, start_epoch=0):
        self.length, self.shuffle, self.seed, self.epoch = length, shuffle, seed, start_epoch

    def __len__(self):
        return self.length

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        order = np.arange(self.length)
        if self.shuffle:
            order = np.random.default_rng((self.seed, epoch)).permutation(self.length)
        return iter((epoch * self.length + order).tolist())


class _Keys(gluon.data.Dataset):
    """What the DataLoader indexes: items are ``(dataset, key)``, so that the
    batchify function can process a whole batch at once in the worker that
    holds the dataset (only the keys cross process boundaries)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        return self.dataset, key


def _batchify(items):
    x, y = items[0][0].batch([key for _, key in items])
    return mx.nd.array(x, dtype="float32"), mx.nd.array(y, dtype="float32")


def _batchify_in_worker(items):
    # Shared-memory arrays travel back to the main process without a copy,
    # as in Gluon's default multiprocessing batchify.
    shared = mx.context.Context("cpu_shared", 0)
    x, y = items[0][0].batch([key for _, key in items])
    return mx.nd.array(x, dtype="float32", ctx=shared), mx.nd.array(y, dtype="float32", ctx=shared)


def make_loader(dataset, batch_size, shuffle, num_workers=0, last_batch="keep", seed=0, start_epoch=0):
    """A Gluon ``DataLoader`` over ``dataset``; every pass over it is a new epoch.

    Batches are made with the vectorised :meth:`FERPlusDataset.batch`, in
    ``num_workers`` processes when asked. ``start_epoch`` lets a resumed run
    continue the sequence of shuffles and augmentations where it stopped.
    """
    sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, start_epoch=start_epoch)
    batches = gluon.data.BatchSampler(sampler, batch_size, last_batch)
    batchify = _batchify_in_worker if num_workers > 0 else _batchify
    return gluon.data.DataLoader(_Keys(dataset), batch_sampler=batches, num_workers=num_workers,
                                 batchify_fn=batchify)


def add_commands(subparsers):
    p = subparsers.add_parser("prepare", help="validate and join fer2013.csv + fer2013new.csv into a cache",
                              description="Validate fer2013.csv (or .csv.gz / Kaggle's fer2013.tar.gz) and "
                                          "fer2013new.csv, join them and write the processed cache to --out.")
    p.add_argument("--fer", required=True, help="fer2013.csv, fer2013.csv.gz or fer2013.tar.gz")
    p.add_argument("--ferplus", required=True, help="fer2013new.csv (FER+ votes)")
    p.add_argument("--out", required=True, help="output folder of the cache")
    p.set_defaults(func=_prepare_command)


def _prepare_command(args):
    data = prepare(args.fer, args.ferplus, args.out)
    print(f"wrote {Path(args.out) / CACHE_FILE}: {data!r}")
    print(format_summary(data.summary()))
    return 0
