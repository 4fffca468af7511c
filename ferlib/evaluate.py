"""Judging a trained FER+ network: metrics, crowd agreement, calibration, TTA, Grad-CAM.

Three layers, each usable on its own:

* **Metrics** are pure functions of ``(probabilities, targets)`` numpy arrays
  (:func:`accuracy`, :func:`top_k_accuracy`, :func:`confusion_matrix`,
  :func:`per_class_metrics`, :func:`kl_divergence`, :func:`cross_entropy`,
  :func:`calibration`), so they can be checked on hand-made arrays and
  recomputed from stored predictions (:func:`compute_metrics`).
* **Prediction** runs a network over faces with the one preprocessing of
  :mod:`ferlib.transforms` (:func:`predict_probabilities`), optionally over
  several test-time views (flip, shifted crops) whose probabilities are averaged.
* **Runs**: :func:`evaluate_run` loads the best network of a run folder,
  predicts a split of a prepared cache and writes every figure to JSON plus the
  probabilities to an ``.npz`` beside it; ``python -m ferlib evaluate`` is the
  command-line form.

Protocol (the FER+ paper's): accuracy, top-2 accuracy, per-class figures and
the confusion matrix use the rows kept in ``majority`` mode, against the
majority label. Agreement with the crowd -- KL divergence, cross-entropy and
"crowd ECE" -- uses the rows kept in ``crossentropy`` mode, against that mode's
vote distribution (:func:`ferlib.labels.make_targets`).

Ties: the predicted class is the first most probable class in
:data:`~ferlib.labels.EMOTIONS` order (``numpy.argmax``); top-k ranks classes
by probability, ties in class order. A uniform prediction is therefore
"neutral", and its top-2 is {neutral, happiness}.

The saliency part (:func:`grad_cam`) splits a network at the output of its
last convolution block (:func:`split_at_last_conv`) and weights those feature
maps by the mean gradient of the class logit (Selvaraju et al. 2017).
"""
import json
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from . import data as fer_data
from .errors import FERError
from .labels import EMOTIONS, NUM_CLASSES
from .transforms import INPUT_SIZE, WarpParams, normalize, warp_faces
from .fileio import atomic_save, atomic_write_json
from .utils import as_contexts

import mxnet as mx  # noqa: E402  (ferlib's package __init__ has run first)
from mxnet import autograd, gluon  # noqa: E402
from mxnet.gluon import nn  # noqa: E402

#: Bins of the expected calibration error (Guo et al. 2017 use 15).
ECE_BINS = 15
#: Probabilities are clipped to this before taking logs (KL, cross-entropy).
LOG_EPSILON = 1e-7


@dataclass(frozen=True)
class View:
    """One test-time view of a face: a shift (fraction of the input side) and a mirror."""

    shift_x: float = 0.0
    shift_y: float = 0.0
    flip: bool = False

    @property
    def name(self):
        parts = []
        if self.flip:
            parts.append("flip")
        if self.shift_x or self.shift_y:
            parts.append(f"shift({self.shift_x:+.2f},{self.shift_y:+.2f})")
        return "+".join(parts) or "plain"


#: The plain view alone (no TTA).
PLAIN_VIEWS = (View(),)
#: Test-time augmentation: the plain view, its mirror image and four crops
#: shifted by 5% of the side (3 px at 64), well inside the +-8% of training.
TTA_VIEWS = (View(), View(flip=True),
             View(0.05, 0.0), View(-0.05, 0.0), View(0.0, 0.05), View(0.0, -0.05))


# --------------------------------------------------------------------------- metrics


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


# --------------------------------------------------------------------------- prediction


def _check_views(views):
    views = tuple(views)
    if not views or not all(isinstance(v, View) for v in views):
        raise FERError("views must be a non-empty sequence of ferlib.evaluate.View")
    return views


def view_inputs(images, boxes=None, size=INPUT_SIZE, view=View()):
    """Network input (N, 1, size, size) of one test-time view of ``images``.

    The same warp and normalisation as :func:`ferlib.transforms.preprocess`;
    the plain view gives exactly its output.
    """
    if isinstance(images, np.ndarray) and images.ndim == 2:
        images = images[None]
    n = len(images)
    params = WarpParams.identity(n)
    params.shift_x = np.full(n, view.shift_x * size)
    params.shift_y = np.full(n, view.shift_y * size)
    params.flip = np.full(n, bool(view.flip))
    return normalize(warp_faces(images, boxes, size, params))[:, None]


def predict_probabilities(net, images, boxes=None, size=INPUT_SIZE, views=PLAIN_VIEWS, batch_size=256,
                          ctx=None, progress=False):
    """Softmax probabilities of ``net`` for each face and each view.

    Parameters
    ----------
    net : Block
        Any network giving (N, 8) logits for (N, 1, size, size) input.
    images : (N, H, W) uint8, or a list of 2-D uint8 images
    boxes : (N, 4), optional
        Face boxes ``[x, y, w, h]``; default the whole image.
    size : int
        Network input side.
    views : sequence of View
        :data:`PLAIN_VIEWS` (default) or :data:`TTA_VIEWS`.
    batch_size : int
    ctx : Context or list of Context
        Where the network's parameters live; a batch is split across them.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    ndarray float32 (len(views), N, 8); average over axis 0 for TTA.
    """
    views = _check_views(views)
    ctx = as_contexts(ctx)
    if isinstance(images, np.ndarray) and images.ndim == 2:
        images = images[None]
    n = len(images)
    if boxes is not None:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = np.zeros((len(views), n, NUM_CLASSES), dtype=np.float32)
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="predict", unit="batch")
    for start in starts:
        stop = min(start + batch_size, n)
        chunk = images[start:stop]
        chunk_boxes = None if boxes is None else boxes[start:stop]
        for v, view in enumerate(views):
            x = mx.nd.array(view_inputs(chunk, chunk_boxes, size, view))
            parts = gluon.utils.split_and_load(x, ctx, even_split=False) if len(ctx) > 1 else [x.as_in_context(ctx[0])]
            logits = [net(part) for part in parts]
            if logits[0].ndim != 2 or logits[0].shape[1] != NUM_CLASSES:
                raise FERError(f"the network gives outputs of shape {tuple(logits[0].shape)}; FER+ evaluation "
                               f"needs (N, {NUM_CLASSES}) logits over {', '.join(EMOTIONS)}")
            out[v, start:stop] = np.concatenate([mx.nd.softmax(z, axis=1).asnumpy() for z in logits])
    return out


@dataclass
class Predictions:
    """The stored predictions of one evaluation (the ``.npz`` of :func:`evaluate_run`).

    Rows are the faces of the split kept in majority or crossentropy mode.

    Attributes
    ----------
    rows : (M,) int64
        Indices into the prepared cache (``data.images[rows]``).
    probabilities : (M, 8) float32
        Plain-view probabilities.
    view_probabilities : (V, M, 8) float32
        Probabilities of every view (``views[0]`` is the plain view).
    views : list of str
        View names.
    majority_keep, crowd_keep : (M,) bool
        Rows kept in majority / crossentropy mode.
    majority_targets, crowd_targets : (M, 8) float32
        One-hot majority labels and crossentropy vote distributions (zero rows where not kept).
    votes : (M, 10) int
        The raw crowd votes (:data:`ferlib.VOTE_COLUMNS`).
    """

    rows: np.ndarray
    probabilities: np.ndarray
    view_probabilities: np.ndarray
    views: list
    majority_keep: np.ndarray
    crowd_keep: np.ndarray
    majority_targets: np.ndarray
    crowd_targets: np.ndarray
    votes: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def tta_probabilities(self):
        """Mean probabilities over all views, (M, 8)."""
        return self.view_probabilities.mean(axis=0)

    @property
    def labels(self):
        """Majority label of each row, -1 where majority mode drops the row."""
        return np.where(self.majority_keep, self.majority_targets.argmax(axis=1), -1)

    def metrics(self, probabilities=None):
        """:func:`compute_metrics` of ``probabilities`` (default: the plain view)."""
        p = self.probabilities if probabilities is None else np.asarray(probabilities)
        return compute_metrics(p[self.majority_keep], self.majority_targets[self.majority_keep],
                               p[self.crowd_keep], self.crowd_targets[self.crowd_keep])

    def save(self, path):
        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez_compressed(f, rows=self.rows, probabilities=self.probabilities,
                                    view_probabilities=self.view_probabilities, views=np.array(self.views),
                                    majority_keep=self.majority_keep, crowd_keep=self.crowd_keep,
                                    majority_targets=self.majority_targets, crowd_targets=self.crowd_targets,
                                    votes=self.votes, meta=json.dumps(self.meta))
        atomic_save(path, write)
        return Path(path)


def load_predictions(path):
    """Read the predictions ``.npz`` written by :func:`evaluate_run` (path, or its result dict)."""
    if isinstance(path, dict):
        path = path.get("predictions")
        if not path:
            raise FERError("this evaluation result stored no predictions (it was run with save=False)")
    path = Path(path)
    if not path.is_file():
        raise FERError(f"{path} does not exist: run the evaluation first (ferlib.evaluate.evaluate_run)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return Predictions(rows=z["rows"], probabilities=z["probabilities"],
                               view_probabilities=z["view_probabilities"], views=[str(v) for v in z["views"]],
                               majority_keep=z["majority_keep"], crowd_keep=z["crowd_keep"],
                               majority_targets=z["majority_targets"], crowd_targets=z["crowd_targets"],
                               votes=z["votes"], meta=json.loads(str(z["meta"])))
    except (OSError, KeyError, ValueError) as err:
        raise FERError(f"{path} is not a predictions file of ferlib.evaluate ({err})") from None


def predict_split(net, data, split="test", size=INPUT_SIZE, tta=False, views=None, batch_size=256, ctx=None,
                  progress=False):
    """Predict every face of ``split`` kept in majority or crossentropy mode.

    Parameters
    ----------
    net : Block
    data : FERPlusData or str
        The prepared data, or the folder of a cache.
    split : ``train``, ``val`` or ``test``
    size : int
        Network input side (the run's ``input_size``).
    tta : bool
        Predict the :data:`TTA_VIEWS` too (default only the plain view).
    views : sequence of View, optional
        Overrides ``tta``; the first should be the plain view.

    Returns
    -------
    Predictions
    """
    fer_data.check_split(split)
    if not isinstance(data, fer_data.FERPlusData):
        data = fer_data.load_cache(data)
    if views is None:
        views = TTA_VIEWS if tta else PLAIN_VIEWS
    views = _check_views(views)
    # The datasets pick the rows each scheme keeps and their targets, exactly
    # as training and validation do; no augmentation at evaluation.
    majority = fer_data.FERPlusDataset(data, split, "majority", augment=False, size=size)
    crowd = fer_data.FERPlusDataset(data, split, "crossentropy", augment=False, size=size)
    rows = np.union1d(majority.rows, crowd.rows)
    if not len(majority.rows):
        raise FERError(f"the {split} split has no face kept in majority mode: nothing to evaluate")
    majority_keep, crowd_keep = np.isin(rows, majority.rows), np.isin(rows, crowd.rows)
    majority_targets = np.zeros((len(rows), NUM_CLASSES), np.float32)
    majority_targets[majority_keep] = majority.targets  # both row lists are sorted
    crowd_targets = np.zeros((len(rows), NUM_CLASSES), np.float32)
    crowd_targets[crowd_keep] = crowd.targets
    view_probabilities = predict_probabilities(net, data.images[rows], data.boxes[rows], size, views,
                                               batch_size, ctx, progress)
    return Predictions(rows=rows, probabilities=view_probabilities[0], view_probabilities=view_probabilities,
                       views=[v.name for v in views], majority_keep=majority_keep, crowd_keep=crowd_keep,
                       majority_targets=majority_targets, crowd_targets=crowd_targets,
                       votes=np.asarray(data.votes[rows]), meta={"split": split, "input_size": size})


# --------------------------------------------------------------------------- runs


#: Keys of the plain metrics repeated with a ``tta_`` prefix when TTA is on.
TTA_KEYS = ("accuracy", "top2_accuracy", "per_class", "macro_f1", "mean_recall", "confusion_matrix",
            "confusion_matrix_normalized", "ece", "reliability", "kl", "cross_entropy", "crowd_agreement",
            "crowd_ece", "crowd_reliability")


def evaluate_predictions(predictions, tta=None):
    """Metrics of stored :class:`Predictions` (plain, plus ``tta_*`` when several views exist)."""
    result = predictions.metrics()
    if tta is None:
        tta = len(predictions.views) > 1
    if tta:
        tta_metrics = predictions.metrics(predictions.tta_probabilities)
        result.update({f"tta_{key}": tta_metrics[key] for key in TTA_KEYS if key in tta_metrics})
    return result


def default_json_path(run_dir, split):
    """Where :func:`evaluate_run` writes by default: ``run_dir/eval-<split>.json``."""
    return Path(run_dir) / f"eval-{split}.json"


#: Keys that mark a JSON file as a result of :func:`evaluate_run`.
_RESULT_KEYS = {"run", "split", "views", "accuracy", "predictions"}
#: Arrays that mark an ``.npz`` file as stored :class:`Predictions`.
_PREDICTION_KEYS = {"view_probabilities", "majority_keep", "crowd_keep"}


def check_json_path(run_dir, json_path):
    """Refuse a ``json_path`` whose JSON or ``.npz`` would replace a file of the training run."""
    from .train import is_run_file  # the run folder's contract lives with training

    run_dir, json_path = Path(run_dir), Path(json_path)
    if json_path.is_dir():  # checked first: the .npz beside it would be written before the JSON fails
        raise FERError(f"--json {json_path} is a folder; give the name of the JSON file to write")
    for path in (json_path, json_path.with_suffix(".npz")):
        if path.resolve().parent == run_dir.resolve() and is_run_file(path.name):
            raise FERError(f"--json {json_path} would replace {path.name}, a file of the training run in "
                           f"{run_dir}; choose another name, e.g. {default_json_path(run_dir, 'test').name}")
    return json_path


def evaluation_outputs(run_dir):
    """The files :func:`evaluate_run` wrote into ``run_dir``: its JSON results, their ``.npz``
    and the temporary files of interrupted writes (what ``train --overwrite`` removes)."""
    from .train import is_run_file

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = set()
    for path in run_dir.iterdir():
        name = path.name
        if not path.is_file() or is_run_file(name):
            continue
        if (name.startswith("eval-") and path.suffix in (".json", ".npz")) or _is_result_file(path):
            found.add(path)
        elif name.startswith(".eval-") and name.endswith(".tmp"):
            found.add(path)
    return sorted(found)


def _is_result_file(path):
    """True for a JSON result or stored predictions of :func:`evaluate_run`, whatever its name."""
    try:
        if path.suffix == ".json":
            content = json.loads(path.read_text(encoding="utf-8"))
            return isinstance(content, dict) and _RESULT_KEYS <= set(content)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return _PREDICTION_KEYS <= set(z.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False  # not readable as one: not ours
    return False


def evaluate_run(run_dir, data_dir, split="test", tta=False, ctx=None, json_path=None, batch_size=256,
                 save=True, progress=False):
    """Evaluate the best network of a training run on a split of a prepared cache.

    Parameters
    ----------
    run_dir : str or Path
        A run folder (``config.json`` + ``best.params``, see :func:`ferlib.model.load_run`).
    data_dir : str, Path or FERPlusData
        A prepared cache (``python -m ferlib prepare``) or the loaded data.
    split : ``train``, ``val`` or ``test``
    tta : bool
        Also evaluate with test-time augmentation (:data:`TTA_VIEWS`); the
        figures appear again with a ``tta_`` prefix.
    ctx : Context or list of Context, default cpu
    json_path : str or Path, optional
        Where to write the result; default ``run_dir/eval-<split>.json``. The
        probabilities go to the same name with ``.npz``. A path that would
        replace a file of the training run (``config.json``, ``best.params``...)
        is refused.
    save : bool
        Write the JSON and the ``.npz`` (``False``: only return the dict).

    Returns
    -------
    dict (JSON-ready)
        The keys of :func:`compute_metrics` (``accuracy``, ``top2_accuracy``,
        ``per_class``, ``confusion_matrix``, ``kl``, ``cross_entropy``,
        ``ece``, ...), the ``tta_*`` versions when asked, and ``run``,
        ``data``, ``split``, ``model``, ``mode``, ``views``, ``seconds``,
        ``json`` and ``predictions`` (paths, or None when not saved).
    """
    from .model import load_run

    fer_data.check_split(split)  # fail before any loading
    run_dir = Path(run_dir)
    json_path = Path(json_path) if json_path else default_json_path(run_dir, split)
    if save:
        check_json_path(run_dir, json_path)
    data = data_dir if isinstance(data_dir, fer_data.FERPlusData) else fer_data.load_cache(data_dir)
    net, config = load_run(run_dir, ctx=as_contexts(ctx))
    net.hybridize(static_alloc=True)
    size = int(config["input_size"])
    started = time.perf_counter()
    predictions = predict_split(net, data, split, size, tta=tta, batch_size=batch_size, ctx=ctx, progress=progress)
    seconds = time.perf_counter() - started
    predictions.meta.update({"run": str(run_dir), "model": config["model"]})
    result = {
        "run": str(run_dir),
        "data": (data.source.get("cache") or "FERPlusData in memory") if data_dir is data else str(data_dir),
        "split": split,
        "model": config["model"],
        "mode": config.get("mode"),
        "input_size": size,
        "tta": bool(tta),
        "views": predictions.views,
        "seconds": round(seconds, 3),
        "images_per_sec": round(len(predictions.rows) * len(predictions.views) / max(seconds, 1e-9), 1),
    }
    result.update(evaluate_predictions(predictions, tta=tta))
    result["json"] = result["predictions"] = None
    if save:
        npz_path = json_path.with_suffix(".npz")
        predictions.save(npz_path)
        result["json"], result["predictions"] = str(json_path), str(npz_path)
        atomic_write_json(json_path, result)
    return result


def format_result(result):
    """A readable text table of an :func:`evaluate_run` result."""
    has_tta = "tta_accuracy" in result
    lines = [f"run {result.get('run', '?')} ({result.get('model', '?')}, trained in {result.get('mode', '?')} "
             f"mode), split {result.get('split', '?')}: {result['num_faces']} faces with a majority label, "
             f"{result.get('num_crowd_faces', 0)} in crossentropy mode"]
    header = f"  {'':30s}{'plain':>10s}" + (f"{'TTA':>10s}" if has_tta else "")
    lines += ["", header]

    def row(label, key, percent):
        def fmt(value):
            return f"{100 * value:9.2f}%" if percent else f"{value:10.4f}"
        text = f"  {label:30s}{fmt(result[key])}"
        if has_tta and f"tta_{key}" in result:
            text += fmt(result[f"tta_{key}"])
        return text

    lines.append(row("accuracy (majority label)", "accuracy", True))
    lines.append(row("top-2 accuracy", "top2_accuracy", True))
    lines.append(row("mean class recall", "mean_recall", True))
    lines.append(row("macro F1", "macro_f1", False))
    lines.append(row(f"ECE ({result['reliability']['num_bins']} bins)", "ece", False))
    if "kl" in result:
        lines.append(row("KL(crowd || prediction), nats", "kl", False))
        lines.append(row("cross-entropy vs crowd, nats", "cross_entropy", False))
        lines.append(f"  {'  (crowd entropy, its floor)':30s}{result['crowd_entropy']:10.4f}")
        lines.append(row("crowd agreement", "crowd_agreement", True))
        lines.append(row("crowd ECE", "crowd_ece", False))
    width = max(len(e) for e in EMOTIONS)
    lines += ["", f"  {'':{width}s}  precision  recall      F1  support"]
    for emotion, m in result["per_class"].items():
        lines.append(f"  {emotion:{width}s}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:6.3f}  "
                     f"{m['support']:7d}")
    lines += ["", "  confusion matrix (rows: majority label, columns: prediction)",
              f"  {'':{width}s}" + "".join(f"{e[:7]:>8s}" for e in EMOTIONS)]
    for emotion, counts in zip(EMOTIONS, result["confusion_matrix"]):
        lines.append(f"  {emotion:{width}s}" + "".join(f"{c:8d}" for c in counts))
    if result.get("json"):
        lines += ["", f"  wrote {result['json']} and {result['predictions']}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- Grad-CAM


def _run_layers(layers, x):
    for layer in layers:
        x = layer(x)
    return x


def _head_layers(blocks):
    """The layers of ``blocks`` in order, containers opened, Dropout left out.

    The head is differentiated in training mode (see :func:`class_activation_gradients`),
    so it must not hold BatchNorm, which would then use batch statistics.
    """
    layers = []
    for block in blocks:
        if isinstance(block, (nn.HybridSequential, nn.Sequential)):
            layers += _head_layers(block._children.values())
        elif isinstance(block, nn.Dropout):
            continue  # identity at prediction
        elif isinstance(block, nn.BatchNorm):
            raise FERError("Grad-CAM: the layers after the last convolution block hold a BatchNorm")
        else:
            layers.append(block)
    return layers


def split_at_last_conv(net):
    """Split ``net`` into ``(body, head)`` at the output of its last convolution block.

    ``head(body(x))`` equals ``net(x)`` at prediction (the head leaves out
    Dropout); ``body(x)`` is the activation map Grad-CAM weighs: for
    :class:`ferlib.model.VGG13` the ReLU after the last convolution (before
    the last pooling: 8x8 at a 64 input), for GluonCV ResNetV1b the output of
    ``layer4``, for MobileNetV2 the last feature map before global pooling.
    """
    from .model import VGG13

    if isinstance(net, VGG13):
        layers = list(net.features._children.values())
        last_conv = max(i for i, layer in enumerate(layers) if isinstance(layer, nn.Conv2D))
        end = next(i for i in range(last_conv, len(layers)) if isinstance(layers[i], nn.Activation))
        body = layers[:end + 1]
        head = _head_layers(layers[end + 1:] + [net.classifier, net.output])
        return (lambda x: _run_layers(body, x)), (lambda a: _run_layers(head, a))
    try:
        from gluoncv.model_zoo.mobilenet import MobileNetV2
        from gluoncv.model_zoo.resnetv1b import ResNetV1b
    except ImportError:  # pragma: no cover - gluoncv is a dependency
        ResNetV1b = MobileNetV2 = ()
    if isinstance(net, ResNetV1b):
        body = [net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4]
        head = _head_layers([net.avgpool, net.flat, net.fc])
        return (lambda x: _run_layers(body, x)), (lambda a: _run_layers(head, a))
    if isinstance(net, MobileNetV2):
        layers = list(net.features._children.values())
        pool = max(i for i, layer in enumerate(layers) if isinstance(layer, nn.GlobalAvgPool2D))
        body, head = layers[:pool], _head_layers(layers[pool:] + [net.output])
        return (lambda x: _run_layers(body, x)), (lambda a: _run_layers(head, a))
    raise FERError(f"Grad-CAM does not know where the last convolution block of {type(net).__name__} ends "
                   "(supported: ferlib VGG13, GluonCV ResNetV1b and MobileNetV2)")


def class_activation_gradients(net, x, class_ids=None, ctx=None):
    """Activations of the last convolution block and the gradient of a class logit on them.

    Returns
    -------
    activations, gradients : ndarray float32 (N, K, h, w)
    class_ids : ndarray int64 (N,)
        The explained class per image (default: the predicted one).
    probabilities : ndarray float32 (N, 8)
    """
    body, head = split_at_last_conv(net)
    if ctx is None:
        ctx = next((p.list_ctx()[0] for p in net.collect_params().values() if p._data is not None), mx.cpu())
    x = mx.nd.array(np.asarray(x.asnumpy() if isinstance(x, mx.nd.NDArray) else x, np.float32), ctx=ctx)
    if x.ndim != 4 or x.shape[1] != 1:
        raise FERError(f"Grad-CAM needs network input of shape (N, 1, S, S), got {tuple(x.shape)}")
    n = x.shape[0]
    # The activations become a leaf of their own, so autograd gives their gradient.
    with autograd.predict_mode():
        activations = body(x)
    activations.attach_grad()
    # Training mode on purpose: MXNet's MKL-DNN max pooling keeps the argmax
    # it needs for backward only then (in predict mode its gradient lands on
    # the wrong pixels). The head has no Dropout or BatchNorm (_head_layers),
    # so its forward is the prediction's.
    with autograd.record(train_mode=True):
        logits = head(activations)
        if logits.ndim != 2 or logits.shape[1] != NUM_CLASSES:
            raise FERError(f"the network gives outputs of shape {tuple(logits.shape)}; FER+ needs "
                           f"(N, {NUM_CLASSES}) logits")
        probabilities = mx.nd.softmax(logits, axis=1).asnumpy()
        if class_ids is None:
            class_ids = probabilities.argmax(axis=1)
        class_ids = np.broadcast_to(np.asarray(class_ids, dtype=np.int64), (n,)).copy()
        if n and (class_ids.min() < 0 or class_ids.max() >= NUM_CLASSES):
            raise FERError(f"class ids must be in 0..{NUM_CLASSES - 1}")
        score = mx.nd.pick(logits, mx.nd.array(class_ids, ctx=ctx), axis=1).sum()
    score.backward()
    return activations.asnumpy(), activations.grad.asnumpy(), class_ids, probabilities


def grad_cam(net, x, class_ids=None, ctx=None):
    """Grad-CAM maps of a batch: where the last convolution block sees evidence for a class.

    For the activations ``A`` (N, K, h, w) of the last convolution block and
    the logit ``y_c`` of class ``c``: channel weights ``a_k = mean(dy_c/dA_k)``
    over the map, ``cam = ReLU(sum_k a_k A_k)``, upsampled (bilinear) to the
    input size and divided by its maximum (an all-zero map stays zero).

    Parameters
    ----------
    net : VGG13 or a supported GluonCV network (see :func:`split_at_last_conv`)
    x : ndarray or NDArray (N, 1, S, S)
        Network input (:func:`ferlib.transforms.preprocess`).
    class_ids : int or (N,) ints, optional
        Class to explain per image; default the predicted class.
    ctx : Context, default the first of the network's

    Returns
    -------
    cams : ndarray float32 (N, S, S), values in [0, 1]
    class_ids : ndarray int64 (N,)
    probabilities : ndarray float32 (N, 8)
    """
    a, g, class_ids, probabilities = class_activation_gradients(net, x, class_ids, ctx)
    size = np.shape(x)[2:]
    weights = g.mean(axis=(2, 3))
    raw = np.maximum((weights[:, :, None, None] * a).sum(axis=1), 0.0)
    cams = np.empty((len(a),) + tuple(size), dtype=np.float32)
    for i in range(len(a)):
        up = np.maximum(cv2.resize(raw[i].astype(np.float32), (size[1], size[0]),
                                   interpolation=cv2.INTER_LINEAR), 0.0)
        peak = up.max()
        cams[i] = up / peak if peak > 0 else 0.0
    return cams, class_ids, probabilities


def grad_cam_faces(net, images, boxes=None, size=INPUT_SIZE, class_ids=None, ctx=None):
    """Grad-CAM of raw faces: ``(cams, faces, class_ids, probabilities)``.

    ``faces`` (N, size, size) uint8 are the crops the network saw (the same
    geometry as ``cams``), ready to overlay (:func:`ferlib.plots.plot_grad_cam`).
    """
    faces = warp_faces(images, boxes, size)
    cams, class_ids, probabilities = grad_cam(net, normalize(faces)[:, None], class_ids, ctx)
    return cams, faces, class_ids, probabilities


# --------------------------------------------------------------------------- CLI


def add_commands(subparsers):
    p = subparsers.add_parser(
        "evaluate", help="test metrics of a training run: accuracy, F1, confusion, crowd KL, ECE, TTA",
        description="Evaluate the best network of a run folder on a split of a prepared cache. Prints a "
                    "table and writes every figure to JSON and the probabilities to an .npz beside it.")
    p.add_argument("--run", required=True, help="run folder (config.json + best.params), e.g. runs/NAME")
    p.add_argument("--data", required=True, help="prepared cache folder (python -m ferlib prepare)")
    p.add_argument("--split", default="test", help="train, val or test (default test)")
    p.add_argument("--tta", action="store_true", help="also with test-time augmentation (flip + shifted crops)")
    p.add_argument("--json", default=None, help="output JSON (default RUN/eval-SPLIT.json)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--gpus", default=None, help="GPU ids such as 0 or 0,1, or 'cpu' (default: as train, "
                                                "every GPU MXNet can use, else the CPU)")
    p.set_defaults(func=_evaluate_command)


def _evaluate_command(args):
    from .utils import parse_devices

    if args.batch_size < 1:
        raise FERError(f"--batch-size must be at least 1, got {args.batch_size}")
    result = evaluate_run(args.run, args.data, split=args.split, tta=args.tta, ctx=parse_devices(args.gpus),
                          json_path=args.json, batch_size=args.batch_size)
    print(format_result(result))
    return 0
