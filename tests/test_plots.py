"""ferlib.plots: every picture returns its Figure, draws what it is given and saves a PNG."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from ferlib import EMOTIONS, VOTE_COLUMNS, FERError  # noqa: E402
from ferlib import evaluate as ev  # noqa: E402
from ferlib import plots  # noqa: E402

K = len(EMOTIONS)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def saved_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000
    return data


def bars(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def texts(fig):
    found = []
    for ax in fig.axes:
        found += [t.get_text() for t in ax.texts] + [ax.get_title()]
        found += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
    found.append(fig._suptitle.get_text() if fig._suptitle else "")
    return "\n".join(found)


@pytest.fixture(scope="module")
def toy_predictions():
    """Predictions of a fake model on 40 faces with known mistakes."""
    rng = np.random.default_rng(0)
    n = 40
    labels = np.arange(n) % K
    logits = rng.normal(size=(n, K))
    logits[np.arange(n), labels] += 3.0
    logits[:5, 7] += 8.0  # five confident "contempt" calls, four of them wrong
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    votes = np.zeros((n, len(VOTE_COLUMNS)), int)
    votes[np.arange(n), labels] = 7
    votes[np.arange(n), (labels + 1) % K] = 3
    images = rng.integers(0, 256, size=(n, 48, 48), dtype=np.uint8)
    return images, p, labels, votes


def test_confusion_matrix_plot(tmp_path, toy_predictions):
    _, p, labels, _ = toy_predictions
    counts = ev.confusion_matrix(p, labels)
    fig = plots.plot_confusion_matrix(counts, save=tmp_path / "cm.png")
    assert isinstance(fig, Figure)
    saved_png(tmp_path / "cm.png")
    ax = fig.axes[0]
    shown = ax.images[0].get_array()
    assert np.allclose(shown, ev.normalize_rows(counts))  # colours are row shares
    cell_texts = [t.get_text() for t in ax.texts]
    assert len(cell_texts) == np.count_nonzero(counts)  # empty cells stay blank
    assert cell_texts[0] == f"{counts[0, 0] / counts[0].sum():.0%}\n{counts[0, 0]}"  # share and count
    assert [t.get_text() for t in ax.get_xticklabels()] == list(EMOTIONS)
    assert f"accuracy {np.trace(counts) / counts.sum():.1%}" in ax.get_title()
    # Counts instead of shares; and a whole evaluation result is accepted.
    fig = plots.plot_confusion_matrix({"confusion_matrix": counts.tolist()}, normalize=False)
    assert np.array_equal(fig.axes[0].images[0].get_array(), counts)
    with pytest.raises(FERError, match="8x8"):
        plots.plot_confusion_matrix(np.eye(3))


def test_per_class_and_comparison_plots(tmp_path, toy_predictions):
    _, p, labels, _ = toy_predictions
    metrics = ev.compute_metrics(p, labels)
    fig = plots.plot_per_class(metrics, save=tmp_path / "per_class.png")
    saved_png(tmp_path / "per_class.png")
    heights = [b.get_height() for b in bars(fig.axes[0])]
    assert len(heights) == 3 * K
    assert heights[K:2 * K] == pytest.approx([metrics["per_class"][e]["recall"] for e in EMOTIONS])
    assert "(n=5)" in texts(fig)
    fig = plots.plot_metric_comparison({"plain": metrics["per_class"], "other": metrics}, metric="recall",
                                       save=tmp_path / "compare.png")
    saved_png(tmp_path / "compare.png")
    assert len(bars(fig.axes[0])) == 2 * K
    with pytest.raises(FERError, match="metric"):
        plots.plot_metric_comparison({"plain": metrics}, metric="accuracy")
    with pytest.raises(FERError, match="lacks"):
        plots.plot_per_class({"neutral": metrics["per_class"]["neutral"]})


def test_reliability_plot(tmp_path, toy_predictions):
    _, p, labels, _ = toy_predictions
    rel = ev.calibration(p, labels)
    fig = plots.plot_reliability(rel, save=tmp_path / "reliability.png")
    saved_png(tmp_path / "reliability.png")
    diagram, histogram = fig.axes
    used = np.flatnonzero(np.array(rel["count"]) > 0)
    accuracy_bars = bars(diagram)[:len(used)]
    assert [b.get_height() for b in accuracy_bars] == pytest.approx(np.array(rel["accuracy"])[used])
    assert [b.get_height() for b in bars(histogram)] == rel["count"]
    assert f"ECE {rel['ece']:.3f}" in diagram.get_title()
    # Into an existing axes: only the diagram.
    fig, ax = plt.subplots()
    assert plots.plot_reliability({"reliability": rel}, ax=ax) is fig and len(fig.axes) == 1
    with pytest.raises(FERError, match="calibration"):
        plots.plot_reliability({"ece": 0.1})


def test_confident_mistakes_plot(tmp_path, toy_predictions):
    images, p, labels, votes = toy_predictions
    fig = plots.plot_confident_mistakes(images, p, labels, votes, k=4, ncols=2, save=tmp_path / "mistakes.png")
    saved_png(tmp_path / "mistakes.png")
    wrong = np.flatnonzero(p.argmax(axis=1) != labels)
    most_confident = wrong[np.argsort(-p[wrong].max(axis=1))][:4]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 4
    for title, i in zip(titles, most_confident):
        assert title.startswith(f"model: {EMOTIONS[p[i].argmax()]}") and f"crowd: {EMOTIONS[labels[i]]}" in title
    # The bars beside the first face: crowd shares and model probabilities.
    first_bars = bars(fig.axes[1])
    i = most_confident[0]
    assert [b.get_width() for b in first_bars[:K]] == pytest.approx(votes[i, :K] / votes[i].sum())
    assert [b.get_width() for b in first_bars[K:2 * K]] == pytest.approx(p[i])
    # Rows without a majority label (-1) are never shown.
    hidden = labels.copy()
    hidden[most_confident[0]] = -1
    fig = plots.plot_confident_mistakes(images, p, hidden, votes, k=1)
    assert f"crowd: {EMOTIONS[labels[most_confident[1]]]}" in fig.axes[0].get_title()
    with pytest.raises(FERError, match="no mistakes"):
        plots.plot_confident_mistakes(images, np.eye(K)[labels], labels, votes)
    with pytest.raises(FERError, match="votes"):
        plots.plot_confident_mistakes(images, p, labels, votes[:, :8])


def test_grad_cam_plots(tmp_path):
    rng = np.random.default_rng(1)
    faces = rng.integers(0, 256, size=(5, 64, 64), dtype=np.uint8)
    cams = rng.random((5, 64, 64)).astype(np.float32)
    fig = plots.plot_grad_cam(faces[0], cams[0], title="anger 80%", save=tmp_path / "cam.png")
    saved_png(tmp_path / "cam.png")
    assert np.array_equal(fig.axes[0].images[0].get_array(), faces[0])
    assert np.allclose(fig.axes[2].images[1].get_array(), cams[0])  # the overlay
    titles = plots.grad_cam_titles(np.array([4, 0, 1, 2, 3]), np.full((5, K), 1 / K), labels=[4, -1, 0, 2, 3])
    assert titles[0] == "anger 12%\ncrowd: anger" and titles[1] == "neutral 12%"
    fig = plots.plot_grad_cam_grid(faces, cams, titles, ncols=3, save=tmp_path / "grid.png")
    saved_png(tmp_path / "grid.png")
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 5 and [ax.get_title() for ax in shown] == titles
    with pytest.raises(FERError, match="same shape"):
        plots.plot_grad_cam_grid(faces, cams[:, :32, :32])


def test_class_counts_plot(tmp_path, synthetic_cache):
    import json

    from ferlib.data import load_cache

    data = load_cache(synthetic_cache)
    summary = data.summary()
    fig = plots.plot_class_counts(summary, save=tmp_path / "counts.png")
    saved_png(tmp_path / "counts.png")
    heights = [b.get_height() for b in bars(fig.axes[0])]
    expected = [summary["majority"][s]["per_class"][e] for s in ("train", "val", "test") for e in EMOTIONS]
    assert heights == expected
    # summary.json of the cache works too, and shares per split sum to 1.
    on_disk = json.loads((synthetic_cache / "summary.json").read_text())
    fig = plots.plot_class_counts(on_disk, mode="crossentropy", normalize=True, log=False)
    shares = np.array([b.get_height() for b in bars(fig.axes[0])]).reshape(3, K)
    assert np.allclose(shares.sum(axis=1), 1.0)
    with pytest.raises(FERError, match="no label scheme 'votes'"):
        plots.plot_class_counts(summary, mode="votes")


def test_faces_with_votes_plot(tmp_path, toy_predictions):
    images, _, _, votes = toy_predictions
    fig = plots.plot_faces_with_votes(images[:6], votes[:6], ncols=3, save=tmp_path / "votes.png")
    saved_png(tmp_path / "votes.png")
    vote_axes = [ax for ax in fig.axes if bars(ax)]
    assert len(vote_axes) == 6
    assert [b.get_width() for b in bars(vote_axes[2])] == votes[2].tolist()
    assert [t.get_text() for t in vote_axes[0].get_yticklabels()] == list(VOTE_COLUMNS)
    with pytest.raises(FERError, match="votes must have shape"):
        plots.plot_faces_with_votes(images[:6], votes[:5])
    with pytest.raises(FERError, match="grey images"):
        plots.plot_faces_with_votes(np.zeros((2, 3, 4, 5)), votes[:2])
