"""The four FER+ label schemes of Barsoum et al. 2016 ("Training deep networks
for facial expression recognition with crowd-sourced label distribution").

Each FER+ face has 10 crowd votes over 10 columns (:data:`VOTE_COLUMNS`): the 8
emotions of :data:`EMOTIONS`, then ``unknown`` and ``NF`` (not a face).
:func:`make_targets` turns the votes into 8-emotion targets for a scheme, and
:func:`training_targets` gives the per-batch form the loss of that scheme
wants. The rules follow the paper's reference code (``ferplus.py`` in
github.com/microsoft/FERPlus) exactly, vectorised over rows.
"""
import numpy as np

from .errors import FERError

#: FER+ class order, the order of the network's outputs.
EMOTIONS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
#: The 10 vote columns of fer2013new.csv, in file order.
VOTE_COLUMNS = EMOTIONS + ("unknown", "NF")
#: The label schemes of the FER+ paper.
MODES = ("majority", "probability", "crossentropy", "multi_target")

NUM_CLASSES = len(EMOTIONS)
_UNKNOWN = VOTE_COLUMNS.index("unknown")
#: The reference adds this to multi-target masks "to avoid ill-conditioned computation".
MULTI_TARGET_EPSILON = 0.001


def check_mode(mode):
    """Return ``mode`` if it is a FER+ scheme, else raise a FERError listing them."""
    if mode not in MODES:
        raise FERError(f"unknown label mode {mode!r}; choose one of: {', '.join(MODES)}")
    return mode


def remove_outliers(votes):
    """Votes with a count of 1 are outliers (one annotator alone): set them to 0.

    Returns float64 votes of shape (N, 10); the input is not changed.
    """
    votes = np.asarray(votes, dtype=np.float64)
    if votes.ndim != 2 or votes.shape[1] != len(VOTE_COLUMNS):
        raise FERError(f"votes must have shape (N, {len(VOTE_COLUMNS)}), got {votes.shape}")
    return np.where(votes <= 1.0, 0.0, votes)


def _taken_majority(v, total):
    top = v.argmax(axis=1)
    top_votes = v.max(axis=1)
    ok = top_votes > 0.5 * total
    taken = np.zeros_like(v)
    rows = np.flatnonzero(ok)
    taken[rows, top[rows]] = top_votes[rows]
    return taken, ok


def _taken_distribution(v, total):
    """Probability / crossentropy: take classes by votes, ties together, while
    fewer than 75% of the votes and fewer than 3 classes are taken; stop at
    unknown / not-a-face (left out when an emotion came first)."""
    n, width = v.shape
    remaining = v.copy()
    taken = np.zeros_like(v)
    covered = np.zeros(n)
    count = np.zeros(n, dtype=np.int64)
    active = covered < 0.75 * total  # rows with no votes never start
    column = np.arange(width)
    # Each round takes at least one class and the loop stops at 3 classes,
    # so three rounds reach the end of every row.
    for _ in range(3):
        if not active.any():
            break
        peak = remaining.max(axis=1, keepdims=True)
        ties = (remaining == peak) & active[:, None]
        # The reference scans ties in column order and stops at the first
        # unknown / not-a-face column.
        special_ties = ties & (column >= _UNKNOWN)
        has_special = special_ties.any(axis=1)
        first_special = np.where(has_special, special_ties.argmax(axis=1), width)
        emotions_now = ties & (column < first_special[:, None])
        n_emotions_now = emotions_now.sum(axis=1)
        peak = peak[:, 0]
        taken[emotions_now] = remaining[emotions_now]
        remaining[emotions_now] = 0.0
        covered += peak * (n_emotions_now + has_special)
        count += n_emotions_now
        # The special class stays only when nothing else was taken before it.
        special_alone = has_special & (taken.sum(axis=1) == 0)
        rows = np.flatnonzero(special_alone)
        taken[rows, first_special[rows]] = peak[rows]
        count += special_alone
        active = active & ~has_special & (covered < 0.75 * total) & (count < 3)
    ok = (taken.sum(axis=1) > 0.5 * total) & (count <= 3)
    return taken, ok


def _taken_multi_target(v, total):
    taken = np.where(v >= 0.3 * total[:, None], v, 0.0)
    ok = taken.sum(axis=1) > 0.5 * total
    return taken, ok


_SCHEMES = {
    "majority": _taken_majority,
    "probability": _taken_distribution,
    "crossentropy": _taken_distribution,
    "multi_target": _taken_multi_target,
}


def make_targets(votes, mode):
    """Targets of a FER+ label scheme from the crowd votes.

    Parameters
    ----------
    votes : array-like of shape (N, 10)
        Vote counts in the column order of :data:`VOTE_COLUMNS`.
    mode : str
        One of :data:`MODES`.

    Returns
    -------
    targets : ndarray of float32, shape (N, 8)
        The distribution over :data:`EMOTIONS`; each kept row sums to 1,
        dropped rows are all zero.
    keep : ndarray of bool, shape (N,)
        The rows the scheme keeps.

    Notes
    -----
    Counts of 1 are outliers and removed first (every column). Then:

    * ``majority``: the top class must hold more than half of the votes; one-hot.
    * ``probability`` / ``crossentropy``: classes in order of votes, ties
      together, while less than 75% of the votes are covered and fewer than
      3 classes taken; reaching unknown / not-a-face stops the scan, and that
      class is left out when an emotion was taken before it. Rows covering 50%
      or less, or with more than 3 classes, are dropped.
    * ``multi_target``: every class with at least 30% of the votes; rows
      covering 50% or less are dropped.

    In every mode a row whose strongest taken class (first on ties) is unknown
    or not-a-face is dropped; the rest are renormalised over the 8 emotions.
    """
    check_mode(mode)
    v = remove_outliers(votes)
    total = v.sum(axis=1)
    taken, ok = _SCHEMES[mode](v, total)
    keep = ok & (taken.argmax(axis=1) < NUM_CLASSES)
    emotion_votes = taken[:, :NUM_CLASSES]
    sums = emotion_votes.sum(axis=1, keepdims=True)
    targets = np.divide(emotion_votes, sums, out=np.zeros_like(emotion_votes), where=keep[:, None])
    return targets.astype(np.float32), keep


def sample_onehot(targets, rng):
    """Probability mode: draw one class per row from its distribution; one-hot float32.

    ``rng`` is a ``numpy.random.Generator``; a fresh draw per sample and epoch
    is what the paper trains with.
    """
    targets = np.asarray(targets, dtype=np.float64)
    cumulative = targets.cumsum(axis=1)
    u = rng.random((len(targets), 1)) * cumulative[:, -1:]
    drawn = np.minimum((cumulative <= u).sum(axis=1), targets.shape[1] - 1)
    onehot = np.zeros(targets.shape, dtype=np.float32)
    onehot[np.arange(len(targets)), drawn] = 1.0
    return onehot


def multi_target_mask(targets, epsilon=MULTI_TARGET_EPSILON):
    """Multi-target mode: 1 for every taken class, ``epsilon`` elsewhere (float32).

    The multi-target loss, ``-log max_k(mask_k * p_k)``, treats all taken
    classes alike; the reference blends in ``epsilon`` so that a row never
    has an all-zero product.
    """
    taken = (np.asarray(targets) > 0).astype(np.float32)
    return ((1.0 - epsilon) * taken + epsilon).astype(np.float32)


def training_targets(targets, mode, rng=None):
    """The per-batch form of ``targets`` that the loss of ``mode`` trains on.

    majority and crossentropy use the targets as they are; probability draws a
    one-hot label (needs ``rng``); multi_target gives :func:`multi_target_mask`.
    """
    check_mode(mode)
    if mode == "probability":
        if rng is None:
            raise FERError("probability mode draws labels: pass rng=numpy.random.default_rng(seed)")
        return sample_onehot(targets, rng)
    if mode == "multi_target":
        return multi_target_mask(targets)
    return np.asarray(targets, dtype=np.float32)


#: The schemes whose targets are distributions that :func:`sharpen` changes (a one-hot target or a
#: mask of taken classes stays as it is).
SHARPENED_MODES = ("probability", "crossentropy")


def check_target_power(power, mode="crossentropy"):
    """``power`` as a float above 0, else a FERError; a power other than 1 only for :data:`SHARPENED_MODES`."""
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not 0 < power < float("inf"):
        raise FERError(f"the target power must be a number above 0 (1: the crowd's distribution), got {power!r}")
    if power != 1 and check_mode(mode) not in SHARPENED_MODES:
        raise FERError(f"a target power does not apply to the {mode} scheme, whose targets are not distributions; "
                       f"use it with {' or '.join(SHARPENED_MODES)}")
    return float(power)


def sharpen(targets, power):
    """Each row of ``targets`` raised to ``power`` and renormalised (float32).

    1 leaves the crowd's distribution as it is; above 1 moves it towards the classes with the most
    votes, the majority vote that the accuracy counts (2 turns 60/40 into 69/31), without changing
    which classes those are; below 1 flattens it. Rows of zeros stay zeros.
    """
    targets = np.asarray(targets, dtype=np.float64)
    powered = np.power(targets, power)
    sums = powered.sum(axis=1, keepdims=True)
    return np.divide(powered, sums, out=np.zeros_like(powered), where=sums > 0).astype(np.float32)


def class_counts(targets, keep):
    """Per-emotion count of kept rows by their strongest class (first on ties), shape (8,)."""
    top = np.asarray(targets)[np.asarray(keep)].argmax(axis=1)
    return np.bincount(top, minlength=NUM_CLASSES)


def vote_entropy(votes):
    """Entropy in bits of each row's raw vote distribution over the 10 columns: crowd disagreement."""
    v = np.asarray(votes, dtype=np.float64)
    p = v / np.maximum(v.sum(axis=1, keepdims=True), 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(p), 0.0)
    return terms.sum(axis=1)
