"""Preprocessing: same pixels as the FER+ reference (scipy affine_transform +
pseudo-inverse plane fit), only faster."""
import numpy as np
import pytest

import scipy_reference  # bench/, on the path via conftest

from ferlib import FERError
from ferlib.transforms import (FERPLUS_AUGMENTATION, Augmentation, WarpParams, normalize, preprocess,
                               to_grey_uint8, warp_faces)


def reference_warp(img, box, size, p, i):
    return scipy_reference.warp(img, box, size, p.shift_x[i], p.shift_y[i], p.scale_x[i], p.scale_y[i],
                                p.angle[i], p.skew_x[i], p.skew_y[i], p.flip[i])


def reference_normalize(img):
    return scipy_reference.normalize(img, *scipy_reference.plane_fit_matrices(*img.shape))


@pytest.fixture(scope="module")
def faces():
    rng = np.random.default_rng(3)
    # Smooth random images (like faces, unlike white noise) so that bilinear
    # rounding differences stay at the grey-level scale.
    small = rng.integers(0, 256, size=(16, 8, 8)).astype(np.float32)
    import cv2

    return np.stack([cv2.resize(s, (48, 48), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
                     for s in small])


def test_identity_crop_matches_the_reference(faces):
    size = 64
    params = WarpParams.identity(len(faces))
    ours = warp_faces(faces, size=size).astype(int)
    box = (0, 0, 48, 48)
    ref = np.stack([reference_warp(f, box, size, params, i) for i, f in enumerate(faces)]).astype(int)
    assert ours.shape == (16, 64, 64)
    assert np.abs(ours - ref).max() <= 1  # OpenCV's fixed-point bilinear vs scipy's float


def test_augmented_warp_matches_the_reference(faces):
    size = 64
    params = WarpParams.draw(len(faces), size, np.random.default_rng(0), FERPLUS_AUGMENTATION)
    assert params.flip.any() and not params.flip.all()
    boxes = np.tile([4.0, 2.0, 40.0, 44.0], (len(faces), 1))
    ours = warp_faces(faces, boxes, size, params).astype(int)
    ref = np.stack([reference_warp(f, boxes[i], size, params, i) for i, f in enumerate(faces)]).astype(int)
    diff = np.abs(ours - ref)
    assert np.mean(diff) < 0.6 and np.percentile(diff, 99.9) <= 2


def test_normalize_matches_the_pseudo_inverse_plane_fit(faces):
    warped = warp_faces(faces, size=64)
    ours = normalize(warped)
    ref = np.stack([reference_normalize(f) for f in warped])
    assert ours.dtype == np.float32 and ours.shape == warped.shape
    np.testing.assert_allclose(ours, ref, atol=2e-4)
    flat = ours.reshape(len(ours), -1)
    np.testing.assert_allclose(flat.mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(flat.std(axis=1), 1, atol=1e-4)


def test_normalize_removes_a_lighting_plane():
    rng = np.random.default_rng(1)
    face = rng.integers(60, 120, size=(64, 64))
    yy, xx = np.mgrid[0:64, 0:64]
    lit = np.clip(face + 1.5 * xx + 0.5 * yy, 0, 255).astype(np.uint8)
    out = normalize(lit)
    # No linear trend left: the fitted plane of the output is flat.
    design = np.stack([np.ones(64 * 64), xx.ravel(), yy.ravel()], axis=1)
    coeffs, *_ = np.linalg.lstsq(design, out.ravel().astype(np.float64), rcond=None)
    np.testing.assert_allclose(coeffs, 0, atol=1e-5)


def test_flat_image_is_left_at_zero_not_divided():
    out = normalize(np.full((2, 64, 64), 128, np.uint8))
    assert np.isfinite(out).all() and np.abs(out).max() < 1e-5


def test_preprocess_shapes_sizes_and_lists():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 48), dtype=np.uint8), rng.integers(0, 256, (300, 200), dtype=np.uint8)]
    boxes = [[0, 0, 48, 48], [50, 60, 100, 120]]
    x = preprocess(images, boxes, size=48)
    assert x.shape == (2, 1, 48, 48) and x.dtype == np.float32
    assert preprocess(images[0]).shape == (1, 1, 64, 64)


def test_augmentation_is_random_per_draw_and_repeatable_per_seed(faces):
    a = preprocess(faces, augmentation=FERPLUS_AUGMENTATION, rng=np.random.default_rng(5))
    b = preprocess(faces, augmentation=FERPLUS_AUGMENTATION, rng=np.random.default_rng(5))
    c = preprocess(faces, augmentation=FERPLUS_AUGMENTATION, rng=np.random.default_rng(6))
    plain = preprocess(faces)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, plain)
    with pytest.raises(FERError, match="rng"):
        preprocess(faces, augmentation=FERPLUS_AUGMENTATION)


def test_augmentation_ranges_are_respected():
    aug = Augmentation()
    p = WarpParams.draw(5000, 64, np.random.default_rng(0), aug)
    assert np.abs(p.shift_x).max() <= 64 * 0.08 and np.abs(p.angle).max() <= 20
    assert np.abs(p.skew_x).max() <= 0.05 and np.abs(p.skew_y).max() <= 0.05
    assert 1 / 1.05 <= p.scale_x.min() and p.scale_x.max() <= 1.05
    assert 0.45 < p.flip.mean() < 0.55
    assert not WarpParams.draw(100, 64, np.random.default_rng(0), Augmentation(flip=False)).flip.any()


def test_flip_mirrors_the_face():
    img = np.zeros((48, 48), np.uint8)
    img[:, :10] = 255  # bright left edge
    p = WarpParams.identity(1)
    p.flip = np.array([True])
    out = warp_faces(img, params=p)[0]
    assert out[:, -5:].mean() > 200 and out[:, :5].mean() < 50


@pytest.mark.parametrize("image, shape", [
    (np.zeros((10, 12, 3), np.uint8), (10, 12)),
    (np.zeros((10, 12, 4), np.uint8), (10, 12)),
    (np.full((10, 12), 65535, np.uint16), (10, 12)),
    (np.zeros((10, 12, 1), np.uint8), (10, 12)),
])
def test_to_grey_uint8(image, shape):
    out = to_grey_uint8(image)
    assert out.shape == shape and out.dtype == np.uint8
