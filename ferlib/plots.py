"""Pictures of the data and of a model's behaviour (matplotlib).

Every function returns the ``matplotlib.figure.Figure`` it drew on and takes
``save=path`` to also write it (PNG, or any format matplotlib knows by the
extension). Functions that draw a single panel also take ``ax=`` to draw into
an existing figure. In a notebook end the line with ``;`` (or assign the
figure) so it is shown once.

Data (notebook 01)
    :func:`plot_class_counts` (faces per class and split for a label scheme),
    :func:`plot_faces_with_votes` (faces beside their 10 crowd votes).
Evaluation (notebook 04, from :mod:`ferlib.evaluate` results)
    :func:`plot_confusion_matrix`, :func:`plot_per_class`,
    :func:`plot_metric_comparison` (e.g. plain vs TTA), :func:`plot_reliability`,
    :func:`plot_confident_mistakes`, :func:`plot_grad_cam`, :func:`plot_grad_cam_grid`.
"""
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import PercentFormatter

from .errors import FERError
from .labels import EMOTIONS, NUM_CLASSES, VOTE_COLUMNS
from .formats import SPLITS

#: Split order of the data plots.
#: One colour per split, per metric, and the crowd / model pair.
SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}
METRIC_COLOURS = {"precision": "tab:blue", "recall": "tab:orange", "f1": "tab:green"}
CROWD_COLOUR, MODEL_COLOUR = "tab:grey", "tab:red"


def _finish(fig, save):
    if save is not None:
        save = Path(save)
        save.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, dpi=120, bbox_inches="tight")
    return fig


def _new_axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def _grey_images(images, what="images"):
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim == 4 and images.shape[1] == 1:  # network input (N, 1, S, S)
        images = images[:, 0]
    if images.ndim != 3:
        raise FERError(f"{what} must be grey images of shape (N, H, W), got {images.shape}")
    return images


def _grid(n, ncols, panel_size, panels_per_item=1, width_ratios=None):
    """A figure with ``n`` items of ``panels_per_item`` axes each, ``ncols`` items per row."""
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    w, h = panel_size
    fig, axes = plt.subplots(nrows, ncols * panels_per_item, squeeze=False, layout="constrained",
                             figsize=(w * ncols, h * nrows),
                             gridspec_kw={"width_ratios": list(width_ratios) * ncols} if width_ratios else None)
    for ax in axes.ravel()[n * panels_per_item:]:
        ax.axis("off")
    items = [axes[i // ncols, (i % ncols) * panels_per_item:(i % ncols + 1) * panels_per_item] for i in range(n)]
    return fig, items


# --------------------------------------------------------------------------- data


def _schemes(summary):
    """The per-scheme counts from ``FERPlusData.summary()`` or the cache's summary.json content."""
    if isinstance(summary, dict) and "schemes" in summary:
        summary = summary["schemes"]
    if not isinstance(summary, dict) or not summary:
        raise FERError("summary must be FERPlusData.summary() or the content of the cache's summary.json")
    return summary


def plot_class_counts(summary, mode="majority", splits=SPLITS, normalize=False, log=False, ax=None, title=None,
                      save=None):
    """Faces per emotion and split for one label scheme (grouped bars).

    Parameters
    ----------
    summary : dict
        :meth:`ferlib.data.FERPlusData.summary` or the content of the cache's
        ``summary.json`` (``{"schemes": ...}``).
    mode : str
        Label scheme (counts by strongest class of the kept rows).
    normalize : bool
        Show each split's share per class instead of counts (compares splits of different sizes).
    log : bool
        Logarithmic count axis (contempt and disgust are ~100x rarer than happiness in FER+).
    """
    schemes = _schemes(summary)
    if mode not in schemes:
        raise FERError(f"the summary has no label scheme {mode!r}; it has: {', '.join(schemes)}")
    per_split = schemes[mode]
    splits = [s for s in splits if s in per_split]
    fig, ax = _new_axes(ax, (9, 4))
    x = np.arange(NUM_CLASSES)
    width = 0.8 / max(len(splits), 1)
    for i, split in enumerate(splits):
        counts = np.array([per_split[split]["per_class"][e] for e in EMOTIONS], dtype=float)
        total = per_split[split]["total"]
        values = counts / max(total, 1) if normalize else counts
        bars = ax.bar(x + (i - (len(splits) - 1) / 2) * width, values, width,
                      label=f"{split} ({total:,})", color=SPLIT_COLOURS.get(split))
        if not normalize:
            ax.bar_label(bars, labels=[f"{int(c):,}" for c in counts], fontsize=7, rotation=90, padding=2)
    ax.set_xticks(x, EMOTIONS, rotation=30, ha="right")
    ax.set_ylabel("share of the split" if normalize else "faces")
    if normalize:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    if log:
        ax.set_yscale("log")
    ax.margins(y=0.15)
    ax.legend(title="split (faces kept)")
    ax.set_title(title or f"Faces per class, {mode} labels")
    return _finish(fig, save)


def plot_faces_with_votes(images, votes, titles=None, ncols=4, columns=VOTE_COLUMNS, save=None):
    """Each face beside a bar chart of its crowd votes.

    Parameters
    ----------
    images : (N, H, W) uint8
    votes : (N, 10) ints in :data:`ferlib.VOTE_COLUMNS` order (or (N, len(columns)))
    titles : list of str, optional
        One per face; default the face's index and vote count.
    ncols : int
        Faces per row.
    """
    images = _grey_images(images)
    votes = np.asarray(votes)
    if votes.ndim != 2 or votes.shape != (len(images), len(columns)):
        raise FERError(f"votes must have shape ({len(images)}, {len(columns)}) for {len(images)} images, "
                       f"got {votes.shape}")
    if titles is not None and len(titles) != len(images):
        raise FERError(f"{len(titles)} titles for {len(images)} images")
    if not len(images):
        raise FERError("no images to show")
    fig, items = _grid(len(images), ncols, (4.2, 1.9), panels_per_item=2, width_ratios=(1, 1.25))
    y = np.arange(len(columns))
    for i, (face_ax, vote_ax) in enumerate(items):
        face_ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        face_ax.set_xticks([]), face_ax.set_yticks([])
        face_ax.set_title(titles[i] if titles is not None else f"#{i}: {int(votes[i].sum())} votes", fontsize=8)
        top = votes[i].argmax()
        colours = [MODEL_COLOUR if j == top else CROWD_COLOUR for j in range(len(columns))]
        vote_ax.barh(y, votes[i], color=colours)
        vote_ax.set_yticks(y, columns, fontsize=6)
        vote_ax.invert_yaxis()
        vote_ax.set_xlim(0, max(int(votes.max()), 1))
        vote_ax.tick_params(axis="x", labelsize=6)
    return _finish(fig, save)


# --------------------------------------------------------------------------- metrics


def _from_result(value, key):
    """Accept either an evaluation result dict or the value stored under ``key``."""
    if isinstance(value, dict) and key in value:
        return value[key]
    return value


def plot_confusion_matrix(counts, normalize=True, class_names=EMOTIONS, ax=None, title=None, cmap="Blues",
                          save=None):
    """Confusion matrix heat map: rows the majority label, columns the prediction.

    Parameters
    ----------
    counts : (8, 8) counts, or an :func:`ferlib.evaluate.evaluate_run` result
        (its ``confusion_matrix``; pass ``result`` and the TTA one as
        ``result["tta_confusion_matrix"]``).
    normalize : bool
        Colour by row share (each true class sums to 100%: recall on the
        diagonal); every non-empty cell also shows its count.
    """
    counts = np.asarray(_from_result(counts, "confusion_matrix"))
    k = len(class_names)
    if counts.shape != (k, k):
        raise FERError(f"confusion matrix must be {k}x{k} for the classes {', '.join(class_names)}, "
                       f"got {counts.shape}")
    sums = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, sums, out=np.zeros(counts.shape), where=sums > 0)
    values = shares if normalize else counts
    fig, ax = _new_axes(ax, (6.6, 5.6))
    image = ax.imshow(values, cmap=cmap, vmin=0, vmax=1 if normalize else max(values.max(), 1))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                 format=PercentFormatter(1.0) if normalize else None)
    threshold = 0.5 * (1 if normalize else max(values.max(), 1))
    for r in range(k):
        for c in range(k):
            if not counts[r, c]:
                continue  # empty cells stay blank, so the confusions stand out
            text = f"{shares[r, c]:.0%}\n{int(counts[r, c])}" if normalize else f"{int(counts[r, c])}"
            ax.text(c, r, text, ha="center", va="center", fontsize=7,
                    color="white" if values[r, c] > threshold else "black")
    ax.set_xticks(range(k), class_names, rotation=35, ha="right")
    ax.set_yticks(range(k), [f"{name} ({int(n)})" for name, n in zip(class_names, sums[:, 0])])
    ax.set_xlabel("prediction")
    ax.set_ylabel("crowd majority label (faces)")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(title or f"Confusion matrix ({int(counts.sum())} faces, accuracy {accuracy:.1%})")
    return _finish(fig, save)


def plot_per_class(per_class, ax=None, title=None, save=None):
    """Precision, recall and F1 of every class (grouped bars); the support under each name.

    ``per_class`` is the ``per_class`` dict of an evaluation (or the result itself).
    """
    per_class = _from_result(per_class, "per_class")
    missing = [e for e in EMOTIONS if e not in per_class]
    if missing:
        raise FERError(f"per_class lacks the class(es) {', '.join(missing)}")
    fig, ax = _new_axes(ax, (9, 3.8))
    x = np.arange(NUM_CLASSES)
    for i, metric in enumerate(("precision", "recall", "f1")):
        values = [per_class[e][metric] for e in EMOTIONS]
        ax.bar(x + (i - 1) * 0.27, values, 0.27, label=metric if metric != "f1" else "F1",
               color=METRIC_COLOURS[metric])
    ax.set_xticks(x, [f"{e}\n(n={per_class[e]['support']})" for e in EMOTIONS], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncols=3, loc="upper right", fontsize=8)
    ax.set_title(title or "Per-class precision, recall and F1 (n = faces in the split)")
    return _finish(fig, save)


def plot_metric_comparison(per_class_by_name, metric="f1", ax=None, title=None, save=None):
    """One per-class metric for several evaluations side by side (e.g. plain vs TTA, or two runs).

    Parameters
    ----------
    per_class_by_name : dict
        ``{"plain": result["per_class"], "TTA": result["tta_per_class"], ...}``
    metric : ``precision``, ``recall`` or ``f1``
    """
    if metric not in METRIC_COLOURS:
        raise FERError(f"metric must be one of {', '.join(METRIC_COLOURS)}, got {metric!r}")
    if not per_class_by_name:
        raise FERError("nothing to compare: pass {name: per_class, ...}")
    fig, ax = _new_axes(ax, (9, 3.8))
    x = np.arange(NUM_CLASSES)
    width = 0.8 / len(per_class_by_name)
    for i, (name, per_class) in enumerate(per_class_by_name.items()):
        per_class = _from_result(per_class, "per_class")
        values = [per_class[e][metric] for e in EMOTIONS]
        ax.bar(x + (i - (len(per_class_by_name) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, EMOTIONS, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(metric if metric != "f1" else "F1")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"Per-class {metric if metric != 'f1' else 'F1'}")
    return _finish(fig, save)


def plot_reliability(reliability, title=None, save=None, ax=None):
    """Reliability diagram: accuracy against confidence per bin, and how many faces each bin holds.

    Parameters
    ----------
    reliability : dict
        :func:`ferlib.evaluate.calibration` output, e.g. ``result["reliability"]``
        or ``result["crowd_reliability"]`` (or an evaluation result: its
        ``reliability``).
    ax : Axes, optional
        Draw only the diagram there; without it the figure also has a count
        histogram below.

    Bars below the diagonal are over-confident bins, above it under-confident
    ones; the hatched gap is what ECE averages, weighted by the bin counts.
    """
    rel = _from_result(reliability, "reliability")
    try:
        edges, counts = np.asarray(rel["bin_edges"]), np.asarray(rel["count"])
        accuracy, confidence = np.asarray(rel["accuracy"]), np.asarray(rel["confidence"])
    except (KeyError, TypeError):
        raise FERError("reliability must be the output of ferlib.evaluate.calibration") from None
    if ax is None:
        fig, (ax, count_ax) = plt.subplots(2, 1, figsize=(5, 5.6), sharex=True, layout="constrained",
                                           gridspec_kw={"height_ratios": (3, 1)})
    else:
        fig, count_ax = ax.figure, None
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    used = counts > 0
    ax.plot([0, 1], [0, 1], "--", color="black", lw=1, label="perfect calibration")
    ax.bar(centres[used], accuracy[used], width[used], color="tab:blue", edgecolor="white", label="accuracy")
    low = np.minimum(accuracy, confidence)
    ax.bar(centres[used], np.abs(confidence - accuracy)[used], width[used], bottom=low[used],
           color="tab:red", alpha=0.3, edgecolor="tab:red", hatch="//", label="gap to mean confidence")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy in bin")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or f"Reliability (ECE {rel['ece']:.3f}, {len(counts)} bins)")
    if count_ax is not None:
        count_ax.bar(centres, counts, width, color="tab:grey", edgecolor="white")
        count_ax.set_ylabel("faces")
        count_ax.set_xlabel("confidence (largest probability)")
    else:
        ax.set_xlabel("confidence (largest probability)")
    return _finish(fig, save)


def plot_confident_mistakes(images, probabilities, labels, votes, k=8, ncols=4, save=None):
    """The ``k`` most confident wrong predictions, each face beside the crowd's votes and the model's probabilities.

    Parameters
    ----------
    images : (N, H, W) uint8
        The faces (e.g. ``data.images[predictions.rows]``).
    probabilities : (N, 8)
    labels : (N,) ints
        The majority label; rows with -1 (no majority) are left out.
    votes : (N, 10) crowd votes (:data:`ferlib.VOTE_COLUMNS`)
    k, ncols : int

    The bar chart shows, per emotion, the share of the 10 annotators (grey)
    and the network's probability (red): often the "mistake" is a face the
    crowd itself split on.
    """
    images = _grey_images(images)
    p = np.asarray(probabilities, dtype=float)
    labels, votes = np.asarray(labels), np.asarray(votes)
    n = len(images)
    if p.shape != (n, NUM_CLASSES) or labels.shape != (n,) or votes.shape != (n, len(VOTE_COLUMNS)):
        raise FERError(f"for {n} images give probabilities ({n}, {NUM_CLASSES}), labels ({n},) and votes "
                       f"({n}, {len(VOTE_COLUMNS)}); got {p.shape}, {labels.shape}, {votes.shape}")
    predicted = p.argmax(axis=1)
    wrong = np.flatnonzero((labels >= 0) & (predicted != labels))
    if not len(wrong):
        raise FERError("no mistakes to show: every face with a majority label is predicted correctly")
    chosen = wrong[np.argsort(-p[wrong].max(axis=1), kind="stable")][:k]
    fig, items = _grid(len(chosen), ncols, (4.4, 2.1), panels_per_item=2, width_ratios=(1, 1.3))
    y = np.arange(NUM_CLASSES)
    for (face_ax, bar_ax), i in zip(items, chosen):
        face_ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        face_ax.set_xticks([]), face_ax.set_yticks([])
        face_ax.set_title(f"model: {EMOTIONS[predicted[i]]} {p[i, predicted[i]]:.0%}\n"
                          f"crowd: {EMOTIONS[labels[i]]} ({int(votes[i, labels[i]])}/{int(votes[i].sum())})",
                          fontsize=8)
        crowd_share = votes[i, :NUM_CLASSES] / max(votes[i].sum(), 1)
        bar_ax.barh(y - 0.2, crowd_share, 0.4, color=CROWD_COLOUR, label="crowd")
        bar_ax.barh(y + 0.2, p[i], 0.4, color=MODEL_COLOUR, label="model")
        bar_ax.set_yticks(y, EMOTIONS, fontsize=6)
        bar_ax.invert_yaxis()
        bar_ax.set_xlim(0, 1)
        bar_ax.tick_params(axis="x", labelsize=6)
    items[0][1].legend(fontsize=6, loc="lower right")
    fig.suptitle(f"Most confident mistakes ({len(chosen)} of {len(wrong)})", fontsize=10)
    return _finish(fig, save)


# --------------------------------------------------------------------------- Grad-CAM


def _overlay(ax, face, cam, alpha):
    ax.imshow(face, cmap="gray", vmin=0, vmax=255)
    ax.imshow(cam, cmap="jet", alpha=alpha, vmin=0, vmax=1, extent=(-0.5, face.shape[1] - 0.5,
                                                                    face.shape[0] - 0.5, -0.5))
    ax.set_xticks([]), ax.set_yticks([])


def _check_cams(faces, cams):
    faces, cams = _grey_images(faces, "faces"), _grey_images(cams, "cams")
    if faces.shape != cams.shape:
        raise FERError(f"faces {faces.shape} and cams {cams.shape} must have the same shape "
                       "(use ferlib.evaluate.grad_cam_faces, which returns both)")
    return faces, cams


def plot_grad_cam(face, cam, title=None, alpha=0.45, save=None):
    """One face, its Grad-CAM map and the two overlaid (three panels)."""
    faces, cams = _check_cams(face, cam)
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8), layout="constrained")
    axes[0].imshow(faces[0], cmap="gray", vmin=0, vmax=255)
    axes[0].set_title("face (network input)", fontsize=9)
    shown = axes[1].imshow(cams[0], cmap="jet", vmin=0, vmax=1)
    axes[1].set_title("Grad-CAM", fontsize=9)
    _overlay(axes[2], faces[0], cams[0], alpha)
    axes[2].set_title("overlay", fontsize=9)
    for ax in axes[:2]:
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(shown, ax=axes, fraction=0.025, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=10)
    return _finish(fig, save)


def plot_grad_cam_grid(faces, cams, titles=None, ncols=6, alpha=0.45, save=None):
    """Grad-CAM overlays of several faces (``faces`` and ``cams`` of the same shape (N, S, S))."""
    faces, cams = _check_cams(faces, cams)
    if titles is not None and len(titles) != len(faces):
        raise FERError(f"{len(titles)} titles for {len(faces)} faces")
    if not len(faces):
        raise FERError("no faces to show")
    fig, items = _grid(len(faces), ncols, (1.9, 2.1))
    for i, (ax,) in enumerate(items):
        _overlay(ax, faces[i], cams[i], alpha)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    return _finish(fig, save)


def grad_cam_titles(class_ids, probabilities, labels=None):
    """Titles "predicted p% / crowd label" for :func:`plot_grad_cam_grid`."""
    titles = []
    for i, c in enumerate(np.asarray(class_ids)):
        text = f"{EMOTIONS[c]} {probabilities[i][c]:.0%}"
        if labels is not None and labels[i] >= 0:
            text += f"\ncrowd: {EMOTIONS[labels[i]]}"
        titles.append(text)
    return titles
