"""Preprocessing: same pixels as the FER+ reference (scipy affine_transform +
pseudo-inverse plane fit), only faster."""
import numpy as np
import pytest

import scipy_reference  # bench/, on the path via conftest

from ferlib import FERError
from ferlib.transforms import (FERPLUS_AUGMENTATION, NORMALIZATIONS, Augmentation, WarpParams, normalization_of,
                               normalize, preprocess,
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


def test_standard_normalisation_keeps_the_contrast_the_ferplus_one_equalises(faces):
    standard = normalize(faces, "standard")
    pixels = faces.reshape(len(faces), -1).astype(np.float64)
    expected = (pixels - pixels.mean(axis=1, keepdims=True)) / pixels.std(axis=1, keepdims=True)
    assert np.allclose(standard.reshape(len(faces), -1), expected, atol=1e-5)
    # Standardisation undoes any gain and offset, and no more: a gamma curve survives it ...
    brighter = (faces.astype(np.float64) * 0.5 + 100).astype(np.uint8)
    assert np.allclose(normalize(brighter, "standard"), standard, atol=0.02)
    gamma = (255 * (faces / 255.0) ** 2.2).astype(np.uint8)
    assert np.abs(normalize(gamma, "standard") - standard).mean() > 0.1
    # ... which the FER+ histogram equalisation removes (same grey-level order, same ranks).
    ferplus, ferplus_gamma = normalize(faces), normalize(gamma)
    assert np.abs(ferplus_gamma - ferplus).mean() < np.abs(normalize(gamma, "standard") - standard).mean() / 2
    assert np.array_equal(preprocess(faces, size=48, normalization="standard")[:, 0], standard)
    assert normalize(np.full((48, 48), 7, np.uint8), "standard").max() == 0  # flat: zero, not divided


def test_a_normalisation_is_named_and_read_from_a_run_config(faces):
    assert NORMALIZATIONS[0] == "ferplus" and normalization_of({}) == "ferplus"  # runs from before the setting
    assert normalization_of({"normalization": "standard"}) == "standard"
    for call in (lambda: normalize(faces, "zscore"), lambda: preprocess(faces, normalization="zscore"),
                 lambda: normalization_of({"normalization": "zscore"})):
        with pytest.raises(FERError, match="unknown normalization 'zscore'; choose one of: ferplus, standard"):
            call()


def test_whole_pixel_shifts_copy_the_face_without_resampling(faces):
    shifts_and_flips = Augmentation(max_angle=0, max_skew=0, max_scale=1, whole_pixels=True)
    many = WarpParams.draw(1000, 48, np.random.default_rng(0), shifts_and_flips)
    assert set(np.unique(many.shift_x)) == set(range(-4, 5)) == set(np.unique(many.shift_y))  # 8% of 48, rounded
    params = WarpParams.draw(len(faces), 48, np.random.default_rng(0), shifts_and_flips)
    warped = warp_faces(faces, size=48, params=params)
    for face, out, dx, dy, flip in zip(faces, warped, params.shift_x, params.shift_y, params.flip):
        out = out[:, ::-1] if flip else out  # the mirror comes after the warp
        # The output pixel (x, y) is the source pixel (x - dx, y - dy): a crop of the mirror-padded face.
        padded = np.pad(face, 8, mode="symmetric")
        x0, y0 = 8 - int(dx), 8 - int(dy)
        assert np.array_equal(out, padded[y0:y0 + 48, x0:x0 + 48])
    # Sub-pixel shifts resample: the same draw without rounding is no copy.
    blurred = warp_faces(faces, size=48, params=WarpParams.draw(len(faces), 48, np.random.default_rng(0),
                                                                Augmentation(max_angle=0, max_skew=0, max_scale=1)))
    assert not np.array_equal(blurred, warped)


def test_random_erasing_blanks_one_rectangle_of_some_faces(faces):
    from ferlib.transforms import ERASE_AREA

    def inputs(erase, seed=0):
        augmentation = Augmentation(max_angle=0, max_skew=0, max_scale=1, erase=erase)
        return preprocess(faces, size=48, augmentation=augmentation, rng=np.random.default_rng(seed),
                          normalization="standard")[:, 0]

    kept, erased = inputs(0.0), inputs(1.0)
    for face, out in zip(kept, erased):
        changed = face != out
        rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
        assert len(rows) and np.all(out[rows.min():rows.max() + 1, cols.min():cols.max() + 1] == 0)  # one block
        area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) / 48 ** 2
        assert ERASE_AREA[0] / 2 <= area <= ERASE_AREA[1] * 1.2  # rounded to whole pixels
    many = np.repeat(faces[:1], 400, axis=0)
    half = preprocess(many, size=48, augmentation=Augmentation(erase=0.5), rng=np.random.default_rng(1))[:, 0]
    whole = preprocess(many, size=48, augmentation=Augmentation(), rng=np.random.default_rng(1))[:, 0]
    share = np.mean([(a != b).any() for a, b in zip(half, whole)])
    assert 0.4 < share < 0.6
    with pytest.raises(FERError, match="erase is a probability, from 0 to 1; got 1.5"):
        Augmentation(erase=1.5)


def test_mixup_blends_each_face_and_its_target_with_a_partner_of_the_batch():
    from ferlib.transforms import mix_pairs

    n = 64
    x = np.eye(n, dtype=np.float32).reshape(n, 1, 8, 8)  # face i is pixel i: a blend shows who met whom
    y = np.random.default_rng(0).dirichlet(np.ones(8), size=n).astype(np.float32)
    mixed_x, mixed_y = mix_pairs(x, y, np.random.default_rng(3), 0.4)
    assert mixed_x.shape == x.shape and mixed_x.dtype == x.dtype and mixed_y.dtype == y.dtype
    np.testing.assert_allclose(mixed_y.sum(axis=1), 1, rtol=1e-5)  # targets stay distributions
    weights = []
    for i, face in enumerate(mixed_x.reshape(n, n)):
        w = face[i]
        partners = [j for j in np.flatnonzero(face) if j != i]
        assert len(partners) <= 1 and np.isclose(face.sum(), 1)
        partner = partners[0] if partners else i
        np.testing.assert_allclose(mixed_y[i], w * y[i] + (1 - w) * y[partner], atol=1e-6)  # the face's weight
        weights.append(max(w, 1 - w) if partners else 1.0)
    assert np.mean(weights) < 0.95  # blended, not left alone
    # A small alpha keeps most faces close to themselves; alpha 1 blends them evenly.
    for alpha, low, high in ((0.1, 0.85, 1.0), (1.0, 0.6, 0.9)):
        own = mix_pairs(x, y, np.random.default_rng(1), alpha)[0].reshape(n, n).diagonal()
        assert low < np.mean(np.maximum(own, 1 - own)) < high, alpha
    with pytest.raises(FERError, match="mixup is Beta's alpha, 0 \\(off\\) or more; got -1"):
        Augmentation(mixup=-1)


def test_cutmix_pastes_a_rectangle_of_a_partner_and_blends_the_targets_by_its_area():
    from ferlib.transforms import cut_pairs

    n, side = 200, 12
    place = np.arange(side * side, dtype=np.float32).reshape(side, side)
    # pixel (r, c) of face i holds i * 1000 + its place, so a pasted pixel names its face and its place
    x = (np.arange(n, dtype=np.float32)[:, None, None] * 1000 + place)[:, None]
    y = np.random.default_rng(0).dirichlet(np.ones(8), size=n).astype(np.float32)
    mixed_x, mixed_y = cut_pairs(x, y, np.random.default_rng(4), 0.5)
    assert mixed_x.shape == x.shape and mixed_x.dtype == x.dtype and mixed_y.dtype == y.dtype
    assert np.array_equal(x[:, 0, 0, 0], np.arange(n) * 1000)  # the input is left as it was
    np.testing.assert_allclose(mixed_y.sum(axis=1), 1, rtol=1e-5)  # targets stay distributions
    cut = 0
    for i in range(n):
        face = mixed_x[i, 0]
        source = face // 1000
        assert np.array_equal(face - source * 1000, place)  # every pixel sits where it was taken from
        others = np.unique(source[source != i])
        assert len(others) <= 1
        if len(others) == 0:
            np.testing.assert_allclose(mixed_y[i], y[i], atol=1e-6)
            continue
        cut += 1
        rows, cols = np.nonzero(source != i)
        # one rectangle, filled with the partner's pixels
        assert len(rows) == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
        kept = 1 - len(rows) / side ** 2
        np.testing.assert_allclose(mixed_y[i], kept * y[i] + (1 - kept) * y[int(others[0])], atol=1e-6)
    assert 0.3 * n < cut < 0.6 * n  # about half cut (a few rectangles are empty or meet the face itself)
    assert np.array_equal(cut_pairs(x, y, np.random.default_rng(4), 0.0)[0], x)
    with pytest.raises(FERError, match="cutmix is a probability, from 0 to 1; got 1.5"):
        Augmentation(cutmix=1.5)
    with pytest.raises(FERError, match="mixup and cutmix both blend the targets of a batch: choose one"):
        Augmentation(cutmix=0.5, mixup=0.2)


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
