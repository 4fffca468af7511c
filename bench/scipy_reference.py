"""The FER+ reference preprocessing, per image, as in microsoft/FERPlus img_util.py:
scipy ``affine_transform`` for the crop / distortion and a pseudo-inverse plane fit.

It is the baseline of bench_preprocess.py and the oracle of tests/test_transforms.py;
ferlib itself never uses it.
"""
import random

import numpy as np
from scipy import ndimage


def plane_fit_matrices(height, width):
    """The design matrix [1, x, y] of the pixel grid and its pseudo-inverse."""
    yy, xx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    a = np.array([np.ones(height * width), xx.ravel(), yy.ravel()]).T
    return a, np.linalg.pinv(a)


def warp(img, box, size, shift_x, shift_y, scale_x, scale_y, angle, skew_x, skew_y, flip):
    """Crop box [x, y, w, h] of ``img`` to size x size with the given distortion."""
    x, y, w, h = box
    ctr_in = np.array((y + h / 2.0, x + w / 2.0))
    ctr_out = np.array((size / 2.0 + shift_y, size / 2.0 + shift_x))
    s_y = scale_y * (h - 1) / (size - 1)
    s_x = scale_x * (w - 1) / (size - 1)
    ang = np.deg2rad(angle)
    t = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    t = t.dot(np.array([[1.0, skew_y], [0.0, 1.0]]))
    t = t.dot(np.array([[1.0, 0.0], [skew_x, 1.0]]))
    t = t.dot(np.diag([s_y, s_x]))
    offset = ctr_in - ctr_out.dot(t)
    out = ndimage.affine_transform(img, t.T, offset=offset, output_shape=(size, size), order=1,
                                   mode="reflect", prefilter=False)
    return np.fliplr(out) if flip else out


def normalize(img, a, a_pinv):
    """Histogram equalisation to [-1, 1], minus the fitted plane, over the std."""
    flat = img.ravel()
    cdf = np.bincount(flat, minlength=256).cumsum()
    eq = (cdf * (2.0 / cdf[-1]) - 1.0)[flat]
    diff = eq - a @ (a_pinv @ eq)
    std = np.sqrt(diff @ diff / diff.size)
    return (diff / std if std > 1e-6 else diff).reshape(img.shape)


def distort_and_normalize(img, size, a, a_pinv, max_shift=0.08, max_scale=1.05, max_angle=20.0, max_skew=0.05):
    """One training sample the reference way: random distortion, then normalisation."""
    u = random.uniform
    zoom_y, zoom_x = u(1.0, max_scale), u(1.0, max_scale)
    warped = warp(img, (0, 0, img.shape[1], img.shape[0]), size,
                  shift_x=size * max_shift * u(-1, 1), shift_y=size * max_shift * u(-1, 1),
                  scale_x=1 / zoom_x if random.random() < 0.5 else zoom_x,
                  scale_y=1 / zoom_y if random.random() < 0.5 else zoom_y,
                  angle=max_angle * u(-1, 1), skew_x=max_skew * u(-1, 1), skew_y=max_skew * u(-1, 1),
                  flip=random.random() < 0.5)
    return normalize(warped, a, a_pinv)
