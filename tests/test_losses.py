"""The FER+ losses: hand-computed values, Gluon's own cross-entropy, finite
differences for the gradients, and hybridized == imperative."""
import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from ferlib import MODES, FERError
from ferlib.labels import make_targets, multi_target_mask
from ferlib.losses import MultiTargetLoss, SoftTargetCrossEntropyLoss, get_loss

# Logits ln 1 .. ln 8: softmax is k / 36 for class k-1 (1 + 2 + ... + 8 = 36).
LOG_K = np.log(np.arange(1, 9, dtype=np.float64))


def p(k):
    """Softmax probability of 0-based class k for the LOG_K logits."""
    return (k + 1) / 36.0


def nd(array, dtype="float64"):
    return mx.nd.array(np.asarray(array), dtype=dtype)


def onehot(k, classes=8):
    row = np.zeros(classes)
    row[k] = 1.0
    return row


def mask(*taken, epsilon=0.001):
    row = np.full(8, epsilon)
    row[list(taken)] = 1.0
    return row


def test_soft_cross_entropy_by_hand():
    logits = np.stack([LOG_K] * 3)
    targets = np.stack([onehot(2), 0.5 * onehot(1) + 0.5 * onehot(3), np.full(8, 1 / 8)])
    loss = SoftTargetCrossEntropyLoss()(nd(logits), nd(targets)).asnumpy()
    expected = [
        -math.log(p(2)),                                    # log 12
        -(0.5 * math.log(p(1)) + 0.5 * math.log(p(3))),     # (log 18 + log 9) / 2
        -sum(math.log(p(k)) for k in range(8)) / 8,
    ]
    assert loss.shape == (3,)
    np.testing.assert_allclose(loss, expected, rtol=1e-12)
    assert loss[0] == pytest.approx(math.log(12), rel=1e-12)


def test_label_smoothing_mixes_the_target_with_the_uniform_distribution():
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 2, size=(6, 8))
    targets = rng.dirichlet(np.ones(8) * 0.5, size=6)
    smoothed = SoftTargetCrossEntropyLoss(smoothing=0.2)
    expected = SoftTargetCrossEntropyLoss()(nd(logits), nd(0.8 * targets + 0.2 / 8)).asnumpy()
    np.testing.assert_allclose(smoothed(nd(logits), nd(targets)).asnumpy(), expected, rtol=1e-12)
    hybrid = SoftTargetCrossEntropyLoss(smoothing=0.2)
    hybrid.hybridize()
    np.testing.assert_allclose(hybrid(nd(logits, "float32"), nd(targets, "float32")).asnumpy(), expected, rtol=1e-5)
    # a one-hot target no longer rewards certainty: the loss is least at p = 0.8 + 0.2/8, not at 1
    sure, smooth = np.log(np.r_[1e4, np.ones(7)]), np.log(np.r_[0.825 / 0.025, np.ones(7)])
    loss = smoothed(nd(np.stack([sure, smooth])), nd(np.stack([onehot(0)] * 2))).asnumpy()
    assert loss[1] < loss[0]
    plain = SoftTargetCrossEntropyLoss()(nd(np.stack([sure, smooth])), nd(np.stack([onehot(0)] * 2))).asnumpy()
    assert plain[0] < plain[1]  # without smoothing, certainty wins
    assert get_loss("crossentropy", smoothing=0.2)._smoothing == 0.2


@pytest.mark.parametrize("bad", [-0.1, 1.0, "0.1", True])
def test_label_smoothing_out_of_range_is_refused(bad):
    with pytest.raises(FERError, match="label smoothing must be a number in \\[0, 1\\)"):
        get_loss("crossentropy", smoothing=bad)


def test_label_smoothing_is_refused_for_the_multi_target_loss():
    with pytest.raises(FERError, match="label smoothing does not apply to the multi_target loss"):
        get_loss("multi_target", smoothing=0.1)
    assert isinstance(get_loss("multi_target", smoothing=0), MultiTargetLoss)


def test_soft_cross_entropy_equals_gluon_for_one_hot():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(16, 8)).astype(np.float32)
    labels = rng.integers(0, 8, size=16)
    targets = np.eye(8, dtype=np.float32)[labels]
    ours = SoftTargetCrossEntropyLoss()(nd(logits, "float32"), nd(targets, "float32")).asnumpy()
    sparse = gluon.loss.SoftmaxCrossEntropyLoss()(nd(logits, "float32"), nd(labels, "float32")).asnumpy()
    dense = gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=False)(
        nd(logits, "float32"), nd(targets, "float32")).asnumpy()
    np.testing.assert_allclose(ours, sparse, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours, dense, rtol=1e-6, atol=1e-7)


def test_soft_cross_entropy_is_smallest_at_the_target():
    """The cross-entropy of a distribution is minimised (= its entropy) when softmax matches it."""
    target = np.array([0.5, 0.3, 0.2, 0, 0, 0, 0, 0])
    with np.errstate(divide="ignore"):
        matching = np.log(target)
    matching[~np.isfinite(matching)] = -30.0
    loss = SoftTargetCrossEntropyLoss()
    at_target = loss(nd([matching]), nd([target])).asscalar()
    entropy = -sum(t * math.log(t) for t in target if t > 0)
    assert at_target == pytest.approx(entropy, abs=1e-9)
    rng = np.random.default_rng(1)
    for _ in range(20):
        other = matching + rng.normal(0, 0.5, size=8)
        assert loss(nd([other]), nd([target])).asscalar() > at_target


def test_multi_target_by_hand():
    logits = np.stack([LOG_K] * 4)
    masks = np.stack([
        mask(1, 3),        # best taken class is 3: p = 4/36
        mask(7),           # one taken class: plain cross-entropy
        mask(0, 7),        # the best of two
        mask(0),           # 1/36 > 0.001 * 8/36: still the taken class
    ])
    loss = MultiTargetLoss()(nd(logits), nd(masks)).asnumpy()
    expected = [-math.log(p(3)), -math.log(p(7)), -math.log(p(7)), -math.log(p(0))]
    np.testing.assert_allclose(loss, expected, rtol=1e-12)
    assert loss[0] == pytest.approx(math.log(9), rel=1e-12)


def test_multi_target_epsilon_term_wins_when_taken_class_is_hopeless():
    """With the taken class at p ~ e^-30, max_k t_k p_k is 0.001 * (largest other p)."""
    logits = LOG_K.copy()
    logits[0] = -30.0
    loss = MultiTargetLoss()(nd([logits]), nd([mask(0)])).asscalar()
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    assert loss == pytest.approx(-math.log(0.001 * probs.max()), rel=1e-12)
    assert np.isfinite(loss)


def test_multi_target_is_cross_entropy_of_best_taken_class_on_real_masks():
    """On masks made by ferlib.labels from votes: -log p_k of the taken class with the largest p."""
    votes = np.array([[5, 5, 0, 0, 0, 0, 0, 0, 0, 0],
                      [0, 4, 4, 2, 0, 0, 0, 0, 0, 0],
                      [0, 0, 0, 0, 10, 0, 0, 0, 0, 0],
                      [3, 0, 0, 3, 0, 0, 0, 4, 0, 0]])
    targets, keep = make_targets(votes, "multi_target")
    assert keep.all()
    masks = multi_target_mask(targets)
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, size=(len(votes), 8))
    loss = MultiTargetLoss()(nd(logits), nd(masks)).asnumpy()
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = [-max(logp[i, k] for k in np.flatnonzero(targets[i] > 0)) for i in range(len(votes))]
    np.testing.assert_allclose(loss, expected, rtol=1e-12)


def test_multi_target_is_finite_for_extreme_logits():
    logits = np.array([[500.0, -500.0, 0, 0, 0, 0, 0, 0]] * 2)
    loss = MultiTargetLoss()(nd(logits, "float32"), nd([mask(1), mask(0)], "float32")).asnumpy()
    assert np.isfinite(loss).all()
    # taken class 1 has p ~ e^-1000, so the max is epsilon * p_0 with p_0 ~ 1
    assert loss[0] == pytest.approx(-math.log(0.001), rel=1e-5)
    assert loss[1] == pytest.approx(0.0, abs=1e-4)  # float32 rounding at logit 500


def numeric_gradient(loss_fn, logits, target, step=1e-6):
    """Central differences of sum(loss) with respect to the logits (float64)."""
    grad = np.zeros_like(logits)
    for index in np.ndindex(*logits.shape):
        plus, minus = logits.copy(), logits.copy()
        plus[index] += step
        minus[index] -= step
        grad[index] = (loss_fn(nd(plus), nd(target)).asnumpy().sum()
                       - loss_fn(nd(minus), nd(target)).asnumpy().sum()) / (2 * step)
    return grad


def autograd_gradient(loss_fn, logits, target):
    x = nd(logits)
    x.attach_grad()
    with autograd.record():
        loss = loss_fn(x, nd(target))
    loss.backward()  # the gradient of sum(loss)
    return x.grad.asnumpy()


def gradient_cases():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 1.5, size=(5, 8))
    distribution = rng.dirichlet(np.ones(8) * 0.5, size=5)
    masks = np.stack([mask(0), mask(1, 2), mask(3, 4, 5), mask(7), mask(2, 6)])
    return logits, distribution, masks


def soft_cross_entropy_closed_form(softmax, distribution):
    """d/dz of -sum t log softmax(z): softmax(z) - t."""
    return softmax - distribution


def multi_target_closed_form(softmax, masks):
    """d/dz of -log max_k(t_k p_k): softmax(z) - onehot(best taken class)."""
    best = np.argmax(np.log(masks) + np.log(softmax), axis=1)
    return softmax - np.eye(8)[best]


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("loss_class,target_index,closed_form", [
    (SoftTargetCrossEntropyLoss, 1, soft_cross_entropy_closed_form),
    (MultiTargetLoss, 2, multi_target_closed_form),
], ids=["soft_cross_entropy", "multi_target"])
def test_loss_gradient_matches_finite_differences_and_closed_form(loss_class, target_index, closed_form,
                                                                   hybridize):
    cases = gradient_cases()
    logits, targets = cases[0], cases[target_index]
    loss = loss_class()
    if hybridize:
        loss.hybridize()
    analytic = autograd_gradient(loss, logits, targets)
    numeric = numeric_gradient(loss, logits, targets)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(analytic, closed_form(softmax, targets), rtol=1e-10, atol=1e-12)


def test_multi_target_tie_sends_gradient_to_one_class():
    """Two taken classes with equal logits: the gradient is that of one of them, not both."""
    logits = np.zeros((1, 8))
    grad = autograd_gradient(MultiTargetLoss(), logits, np.stack([mask(2, 5)]))
    np.testing.assert_allclose(grad.sum(), 0.0, atol=1e-12)  # softmax - onehot sums to 0
    assert (grad < 0).sum() == 1


@pytest.mark.parametrize("loss_class", [SoftTargetCrossEntropyLoss, MultiTargetLoss])
def test_hybridized_equals_imperative(loss_class):
    rng = np.random.default_rng(4)
    logits = nd(rng.normal(0, 2, size=(32, 8)), "float32")
    target = rng.dirichlet(np.ones(8), size=32) if loss_class is SoftTargetCrossEntropyLoss \
        else multi_target_mask(rng.dirichlet(np.ones(8) * 0.3, size=32) > 0.3)
    target = nd(target, "float32")
    weights = nd(rng.uniform(0.5, 2, size=(32, 1)), "float32")
    imperative = loss_class()
    for args in ((logits, target), (logits, target, weights)):
        hybrid = loss_class()  # a hybridized block keeps one argument structure
        hybrid.hybridize()
        first = hybrid(*args).asnumpy()
        np.testing.assert_allclose(first, imperative(*args).asnumpy(), rtol=1e-6)
        np.testing.assert_array_equal(hybrid(*args).asnumpy(), first)  # cached graph, same numbers
    weighted = imperative(logits, target, weights).asnumpy()
    np.testing.assert_allclose(weighted, imperative(logits, target).asnumpy() * weights.asnumpy()[:, 0],
                               rtol=1e-6)


def test_get_loss_by_mode():
    kinds = {mode: type(get_loss(mode)) for mode in MODES}
    assert kinds == {"majority": SoftTargetCrossEntropyLoss, "probability": SoftTargetCrossEntropyLoss,
                     "crossentropy": SoftTargetCrossEntropyLoss, "multi_target": MultiTargetLoss}
    assert get_loss("majority") is not get_loss("majority")  # a fresh block each time


def test_get_loss_unknown_mode_lists_modes():
    with pytest.raises(FERError) as info:
        get_loss("multitarget")
    message = str(info.value)
    assert "multitarget" in message
    for mode in MODES:
        assert mode in message
