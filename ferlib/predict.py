"""Running a network over faces: the one prediction path of training's validation and of evaluation.

:func:`predict_probabilities` preprocesses faces exactly as :func:`ferlib.transforms.preprocess`
does (the plain :class:`View`), optionally also over test-time views (flip, shifted crops) whose
probabilities are averaged; :func:`predict_split` does it for a split of a prepared cache and keeps
the votes beside (:class:`Predictions`); :func:`validation_accuracy` is what training reports.
"""
import json
from dataclasses import dataclass, field
from typing import NamedTuple
from pathlib import Path

import numpy as np

from . import data as fer_data
from .errors import FERError
from .fileio import atomic_save
from .labels import EMOTIONS, NUM_CLASSES
from .metrics import accuracy, compute_metrics
from .transforms import DEFAULT_NORMALIZATION, INPUT_SIZE, WarpParams, normalize, warp_faces
from .utils import as_contexts

import mxnet as mx  # noqa: E402  (ferlib's package __init__ has run first)
from mxnet import gluon  # noqa: E402

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


def _check_views(views):
    views = tuple(views)
    if not views or not all(isinstance(v, View) for v in views):
        raise FERError("views must be a non-empty sequence of ferlib.evaluate.View")
    return views


def view_inputs(images, boxes=None, size=INPUT_SIZE, view=View(), normalization=DEFAULT_NORMALIZATION):
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
    return normalize(warp_faces(images, boxes, size, params), normalization)[:, None]


def predict_probabilities(net, images, boxes=None, size=INPUT_SIZE, views=PLAIN_VIEWS, batch_size=256,
                          ctx=None, progress=False, normalization=DEFAULT_NORMALIZATION):
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
    normalization : str
        The run's intensity normalisation (:func:`ferlib.transforms.normalize`).

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
            x = mx.nd.array(view_inputs(chunk, chunk_boxes, size, view, normalization))
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
                  progress=False, normalization=DEFAULT_NORMALIZATION):
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
    normalization : str
        The run's intensity normalisation.

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
                                               batch_size, ctx, progress, normalization)
    return Predictions(rows=rows, probabilities=view_probabilities[0], view_probabilities=view_probabilities,
                       views=[v.name for v in views], majority_keep=majority_keep, crowd_keep=crowd_keep,
                       majority_targets=majority_targets, crowd_targets=crowd_targets,
                       votes=np.asarray(data.votes[rows]), meta={"split": split, "input_size": size,
                                                                    "normalization": normalization})


class LabelledFaces(NamedTuple):
    """Faces with their majority label: what validation and the accuracy figures use."""
    images: np.ndarray   # (N, 48, 48) uint8
    boxes: np.ndarray    # (N, 4) face boxes
    labels: np.ndarray   # (N,) majority emotion index


def majority_faces(data, split):
    """The faces of ``split`` that have a majority label (the paper's test protocol)."""
    faces = fer_data.FERPlusDataset(data, split, "majority", augment=False)
    return LabelledFaces(faces.images, faces.boxes, faces.labels)


def validation_accuracy(net, faces, size=INPUT_SIZE, ctx=None, batch_size=256, normalization=DEFAULT_NORMALIZATION):
    """Accuracy of ``net`` on :class:`LabelledFaces`, plain view (what training reports per epoch)."""
    if len(faces.labels) == 0:
        return float("nan")
    return accuracy(predict_probabilities(net, faces.images, faces.boxes, size, batch_size=batch_size,
                                          ctx=ctx, normalization=normalization)[0], faces.labels)
