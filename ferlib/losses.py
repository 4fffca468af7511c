"""The losses of the four FER+ label schemes.

The network outputs logits ``z`` (N, 8); ``p = softmax(z)``. Each loss returns
one value per sample, shape (N,), like the losses of :mod:`mxnet.gluon.loss`
(``Trainer.step(batch_size)`` then averages over the batch).

* majority, probability, crossentropy: :class:`SoftTargetCrossEntropyLoss`,
  ``-sum_k t_k log p_k``, with ``t`` the one-hot majority label, a one-hot
  label drawn from the vote distribution each epoch, or the vote
  distribution itself (see :func:`ferlib.labels.training_targets`); with
  ``smoothing`` ``s``, against ``(1 - s) t + s / C`` (label smoothing,
  Szegedy et al. 2016).
* multi_target: :class:`MultiTargetLoss`, ``-log max_k (t_k p_k)`` with ``t``
  the mask of :func:`ferlib.labels.multi_target_mask`: the loss is that of the
  taken class the network already finds most likely.

Both work from ``log_softmax``, so they stay finite for any logits.
"""
from .errors import FERError
from .labels import check_mode

from mxnet.gluon.loss import Loss, _apply_weighting, _reshape_like  # noqa: E402


class _ClassAxisLoss(Loss):
    """A Gluon loss over class scores along ``axis``, one value per sample.

    Subclasses give :meth:`_sample_loss`; the target reshaping, the weighting
    and the per-sample reduction are shared here, as in :mod:`mxnet.gluon.loss`.
    """

    def __init__(self, axis=-1, weight=None, batch_axis=0, **kwargs):
        super().__init__(weight, batch_axis, **kwargs)
        self._axis = axis

    def _sample_loss(self, F, pred, label):
        """The loss of each sample, keeping the class axis (size 1)."""
        raise NotImplementedError

    def hybrid_forward(self, F, pred, label, sample_weight=None):
        loss = self._sample_loss(F, pred, _reshape_like(F, label, pred))
        loss = _apply_weighting(F, loss, self._weight, sample_weight)
        return F.mean(loss, axis=self._batch_axis, exclude=True)


class SoftTargetCrossEntropyLoss(_ClassAxisLoss):
    """Cross-entropy against a target distribution: ``-sum_k t_k log softmax(z)_k``.

    For one-hot targets this equals
    ``gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=False)``.

    Parameters
    ----------
    smoothing : float, default 0
        Label smoothing ``s`` in [0, 1): the target is ``(1 - s) t + s / C`` for ``C`` classes,
        which pulls every class's logit towards the others.
    axis : int, default -1
        The class axis.
    weight : float or None
        Global scalar weight of the loss.
    batch_axis : int, default 0

    Inputs
    ------
    pred : (N, C) logits
    label : (N, C) target distributions (rows summing to 1)
    sample_weight : optional, broadcastable to (N, 1)

    Outputs
    -------
    (N,) loss per sample.
    """

    def __init__(self, smoothing=0.0, axis=-1, weight=None, batch_axis=0, **kwargs):
        super().__init__(axis, weight, batch_axis, **kwargs)
        self._smoothing = check_smoothing(smoothing)

    def _sample_loss(self, F, pred, label):
        log_p = F.log_softmax(pred, axis=self._axis)
        loss = -F.sum(label * log_p, axis=self._axis, keepdims=True)
        if self._smoothing:  # the uniform part s / C of the target, without needing C
            s = self._smoothing
            loss = (1 - s) * loss - s * F.mean(log_p, axis=self._axis, keepdims=True)
        return loss


class MultiTargetLoss(_ClassAxisLoss):
    """The FER+ multi-target loss: ``-log max_k (t_k softmax(z)_k)``.

    ``t`` is 1 for the classes the crowd chose and a small epsilon (0.001)
    elsewhere (:func:`ferlib.labels.multi_target_mask`): predicting any chosen
    class well is enough. Computed as ``-max_k (log t_k + log_softmax(z)_k)``;
    the gradient flows through the one class that attains the maximum (the
    first on ties).

    Parameters
    ----------
    axis : int, default -1
        The class axis.
    weight : float or None
        Global scalar weight of the loss.
    batch_axis : int, default 0

    Inputs
    ------
    pred : (N, C) logits
    label : (N, C) positive mask ``t``
    sample_weight : optional, broadcastable to (N, 1)

    Outputs
    -------
    (N,) loss per sample.
    """

    def _sample_loss(self, F, pred, label):
        score = F.log(label) + F.log_softmax(pred, axis=self._axis)
        # pick at the argmax rather than max(): one class takes the gradient
        # even when scores tie (max's backward would give it to every tied class).
        best = F.stop_gradient(F.argmax(score, axis=self._axis))
        return -F.pick(score, best, axis=self._axis, keepdims=True)


_LOSSES = {
    "majority": SoftTargetCrossEntropyLoss,
    "probability": SoftTargetCrossEntropyLoss,
    "crossentropy": SoftTargetCrossEntropyLoss,
    "multi_target": MultiTargetLoss,
}


def check_smoothing(smoothing):
    """``smoothing`` as a float in [0, 1), else a FERError."""
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0 <= smoothing < 1:
        raise FERError(f"label smoothing must be a number in [0, 1) (0: off), got {smoothing!r}")
    return float(smoothing)


def get_loss(mode, smoothing=0.0, **kwargs):
    """The loss block of a FER+ label scheme (one of :data:`ferlib.labels.MODES`).

    ``smoothing``: label smoothing (:class:`SoftTargetCrossEntropyLoss`; not for the multi-target
    loss). ``kwargs`` go to the loss constructor (e.g. ``weight``).
    """
    loss_class = _LOSSES[check_mode(mode)]
    if check_smoothing(smoothing):
        if loss_class is not SoftTargetCrossEntropyLoss:
            raise FERError(f"label smoothing does not apply to the {mode} loss; "
                           "use it with majority, probability or crossentropy")
        kwargs["smoothing"] = smoothing
    return loss_class(**kwargs)
