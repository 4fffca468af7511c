"""Metrics of FER+ predictions: pure functions of ``(probabilities, targets)`` numpy arrays.

:func:`accuracy`, :func:`top_k_accuracy`, :func:`confusion_matrix`, :func:`per_class_metrics`,
:func:`kl_divergence`, :func:`cross_entropy` and :func:`calibration` can be checked on hand-made
arrays and recomputed from stored predictions (:func:`compute_metrics`).

Protocol (the FER+ paper's): accuracy, top-2 accuracy, per-class figures and the confusion matrix
use the rows kept in ``majority`` mode, against the majority label. Agreement with the crowd -- KL
divergence, cross-entropy and "crowd ECE" -- uses the rows kept in ``crossentropy`` mode, against
that mode's vote distribution (:func:`ferlib.labels.make_targets`).

Ties: the predicted class is the first most probable class in :data:`~ferlib.labels.EMOTIONS`
order (``numpy.argmax``); top-k ranks classes by probability, ties in class order. A uniform
prediction is therefore "neutral", and its top-2 is {neutral, happiness}.
"""
import numpy as np

from .errors import FERError
from .labels import EMOTIONS, NUM_CLASSES

#: Bins of the expected calibration error (Guo et al. 2017 use 15).
ECE_BINS = 15
#: Probabilities are clipped to this before taking logs (KL, cross-entropy).
LOG_EPSILON = 1e-7


def _as_probabilities(probabilities):
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != NUM_CLASSES:
        raise FERError(f"probabilities must have shape (N, {NUM_CLASSES}) over {', '.join(EMOTIONS)}; "
                       f"got {p.shape}")
    return p


def _as_labels(targets, n):
    """Class ids from int labels (N,) or target rows (N, 8) (first strongest class)."""
    t = np.asarray(targets)
    if t.ndim == 2 and t.shape[1] == NUM_CLASSES:
        labels = t.argmax(axis=1)
    elif t.ndim == 1 and t.dtype.kind in "iu":
        labels = t.astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise FERError(f"labels must be class ids 0..{NUM_CLASSES - 1}")
    else:
        raise FERError(f"targets must be class ids (N,) or target rows (N, {NUM_CLASSES}); got shape {t.shape}")
    if len(labels) != n:
        raise FERError(f"{n} predictions but {len(labels)} targets")
    return labels


def _as_distributions(targets, n):
    q = np.asarray(targets, dtype=np.float64)
    if q.shape != (n, NUM_CLASSES):
        raise FERError(f"crowd targets must have shape ({n}, {NUM_CLASSES}) like the predictions; got {q.shape}")
    return q


def predicted_classes(probabilities):
    """The predicted class of each row: the first most probable one, int64 (N,)."""
    return _as_probabilities(probabilities).argmax(axis=1)


def accuracy(probabilities, targets):
    """Share of rows whose predicted class is the target class (0.0 for no rows).

    ``targets`` are class ids (N,) or target rows (N, 8) (e.g. one-hot majority labels).
    """
    p = _as_probabilities(probabilities)
    labels = _as_labels(targets, len(p))
    return float((p.argmax(axis=1) == labels).mean()) if len(p) else 0.0


def top_k_accuracy(probabilities, targets, k=2):
    """Share of rows whose target is among the ``k`` most probable classes (ties in class order)."""
    p = _as_probabilities(probabilities)
    labels = _as_labels(targets, len(p))
    if not 1 <= k <= NUM_CLASSES:
        raise FERError(f"k must be in 1..{NUM_CLASSES}, got {k}")
    if not len(p):
        return 0.0
    top = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def confusion_matrix(probabilities, targets):
    """Counts, int64 (8, 8): row = target class, column = predicted class."""
    p = _as_probabilities(probabilities)
    labels = _as_labels(targets, len(p))
    cells = labels * NUM_CLASSES + p.argmax(axis=1)
    return np.bincount(cells, minlength=NUM_CLASSES * NUM_CLASSES).reshape(NUM_CLASSES, NUM_CLASSES)


def normalize_rows(matrix):
    """Each row divided by its sum (rows with no samples stay zero): recall on the diagonal."""
    m = np.asarray(matrix, dtype=np.float64)
    sums = m.sum(axis=1, keepdims=True)
    return np.divide(m, sums, out=np.zeros_like(m), where=sums > 0)


def per_class_metrics(counts):
    """Precision, recall, F1 and support of every class from confusion-matrix counts.

    Returns ``{emotion: {"precision", "recall", "f1", "support"}}`` in
    :data:`EMOTIONS` order. A ratio whose denominator is zero (a class never
    predicted, or absent from the split) is 0.0, as scikit-learn's
    ``zero_division=0``.
    """
    cm = np.asarray(counts, dtype=np.float64)
    if cm.shape != (NUM_CLASSES, NUM_CLASSES):
        raise FERError(f"confusion matrix must be {NUM_CLASSES}x{NUM_CLASSES}, got {cm.shape}")
    true_positive = np.diag(cm)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    precision = np.divide(true_positive, predicted, out=np.zeros(NUM_CLASSES), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros(NUM_CLASSES), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(NUM_CLASSES), where=both > 0)
    return {emotion: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                      "support": int(support[i])}
            for i, emotion in enumerate(EMOTIONS)}


def kl_divergence(probabilities, crowd, reduce=True):
    """KL(crowd || prediction) = sum_k q_k log(q_k / p_k), in nats; mean over rows.

    Terms with ``q_k = 0`` count 0; ``p`` is clipped at :data:`LOG_EPSILON` so a
    confident miss costs a large but finite amount. ``reduce=False`` gives one
    value per row.
    """
    p = _as_probabilities(probabilities)
    q = _as_distributions(crowd, len(p))
    ratio = np.log(np.maximum(q, LOG_EPSILON)) - np.log(np.maximum(p, LOG_EPSILON))
    per_row = np.where(q > 0, q * ratio, 0.0).sum(axis=1)
    return _mean(per_row) if reduce else per_row


def cross_entropy(probabilities, crowd, reduce=True):
    """Cross-entropy -sum_k q_k log p_k against the crowd distribution ``q``, in nats; mean over rows.

    It equals the entropy of the crowd plus :func:`kl_divergence`, so it is
    the training loss of ``crossentropy`` mode and never below the crowd's own
    disagreement.
    """
    p = _as_probabilities(probabilities)
    q = _as_distributions(crowd, len(p))
    per_row = -(q * np.log(np.maximum(p, LOG_EPSILON))).sum(axis=1)
    return _mean(per_row) if reduce else per_row


def crowd_entropy(crowd):
    """Entropy of each crowd distribution in nats, (N,): the floor of :func:`cross_entropy`."""
    q = np.asarray(crowd, dtype=np.float64)
    return np.where(q > 0, -q * np.log(np.maximum(q, LOG_EPSILON)), 0.0).sum(axis=1)


def _mean(values):
    return float(np.mean(values)) if len(values) else 0.0


def calibration(probabilities, targets, num_bins=ECE_BINS):
    """Expected calibration error and the data of a reliability diagram.

    The confidence of a row is its largest probability; its correctness is
    the target's weight on the predicted class: 0 or 1 for one-hot (majority)
    targets -- the usual ECE -- and, for crowd distributions, the share of
    the crowd that agrees with the prediction. Rows go into ``num_bins``
    equal-width bins ``(b/M, (b+1)/M]`` by confidence;
    ``ECE = sum_b n_b / N * |correct_b - confidence_b|``.

    Parameters
    ----------
    probabilities : (N, 8)
    targets : (N, 8) target rows (one-hot or distributions) or (N,) class ids
    num_bins : int

    Returns
    -------
    dict (JSON-ready)
        ``ece``; ``bin_edges`` (M+1); per bin ``count``, mean ``confidence``
        and mean ``accuracy`` (both 0.0 for empty bins).
    """
    p = _as_probabilities(probabilities)
    if int(num_bins) != num_bins or num_bins < 1:
        raise FERError(f"num_bins must be a positive whole number, got {num_bins!r}")
    num_bins = int(num_bins)
    t = np.asarray(targets)
    if t.ndim == 1:
        t = np.eye(NUM_CLASSES)[_as_labels(t, len(p))]
    t = _as_distributions(t, len(p))
    predicted = p.argmax(axis=1)
    confidence = p.max(axis=1)
    correct = t[np.arange(len(p)), predicted]
    bins = np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    count = np.bincount(bins, minlength=num_bins)
    conf_sum = np.bincount(bins, weights=confidence, minlength=num_bins)
    correct_sum = np.bincount(bins, weights=correct, minlength=num_bins)
    mean_conf = np.divide(conf_sum, count, out=np.zeros(num_bins), where=count > 0)
    mean_correct = np.divide(correct_sum, count, out=np.zeros(num_bins), where=count > 0)
    ece = float(np.abs(correct_sum - conf_sum).sum() / len(p)) if len(p) else 0.0
    return {"ece": ece, "num_bins": num_bins, "bin_edges": np.linspace(0.0, 1.0, num_bins + 1).tolist(),
            "count": count.tolist(), "confidence": mean_conf.tolist(), "accuracy": mean_correct.tolist()}


def expected_calibration_error(probabilities, targets, num_bins=ECE_BINS):
    """The ``ece`` of :func:`calibration`."""
    return calibration(probabilities, targets, num_bins)["ece"]


def compute_metrics(probabilities, majority_targets, crowd_probabilities=None, crowd_targets=None):
    """Every figure of an evaluation from predictions and targets (JSON-ready dict).

    Parameters
    ----------
    probabilities : (N, 8)
        Predictions on the rows kept in majority mode.
    majority_targets : (N, 8) one-hot or (N,) class ids
    crowd_probabilities : (M, 8), optional
        Predictions on the rows kept in crossentropy mode.
    crowd_targets : (M, 8), optional
        The crossentropy-mode vote distributions of those rows.

    Returns
    -------
    dict with ``accuracy``, ``top2_accuracy``, ``per_class``, ``macro_f1``,
    ``mean_recall`` (balanced accuracy), ``confusion_matrix`` (counts, rows =
    majority label, columns = prediction), ``confusion_matrix_normalized``,
    ``ece`` and ``reliability`` (vs the majority label), and with the crowd
    arrays ``kl``, ``cross_entropy``, ``crowd_entropy``, ``crowd_agreement``
    (mean crowd share of the predicted class), ``crowd_ece``, ``crowd_reliability``.
    """
    counts = confusion_matrix(probabilities, majority_targets)
    per_class = per_class_metrics(counts)
    reliability = calibration(probabilities, majority_targets)
    present = [e for e in EMOTIONS if per_class[e]["support"] > 0]
    out = {
        "num_faces": int(counts.sum()),
        "accuracy": accuracy(probabilities, majority_targets),
        "top2_accuracy": top_k_accuracy(probabilities, majority_targets, k=2),
        "per_class": per_class,
        "macro_f1": _mean([per_class[e]["f1"] for e in present]),
        "mean_recall": _mean([per_class[e]["recall"] for e in present]),
        "confusion_matrix": counts.tolist(),
        "confusion_matrix_normalized": normalize_rows(counts).tolist(),
        "ece": reliability["ece"],
        "reliability": reliability,
    }
    if crowd_probabilities is not None:
        crowd_reliability = calibration(crowd_probabilities, crowd_targets)
        out.update({
            "num_crowd_faces": int(len(crowd_probabilities)),
            "kl": kl_divergence(crowd_probabilities, crowd_targets),
            "cross_entropy": cross_entropy(crowd_probabilities, crowd_targets),
            "crowd_entropy": _mean(crowd_entropy(crowd_targets)),
            "crowd_agreement": _mean(np.asarray(crowd_targets)[np.arange(len(crowd_targets)),
                                                               predicted_classes(crowd_probabilities)]),
            "crowd_ece": crowd_reliability["ece"],
            "crowd_reliability": crowd_reliability,
        })
    return out
