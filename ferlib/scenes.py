"""Photo-like scenes made of FER+ faces, with their ground truth: the photo benchmark's data.

A model server meets photos, not 48x48 crops. To measure what the photo path (detect, crop,
predict) loses, :func:`make_scenes` pastes FER+ test faces into real backgrounds from
scikit-image (brick, grass, coffee, a rocket, a cat...: no person in any), several per scene, at
sides from about 40 to 300 pixels, with small rotations, their own lighting, then blur and noise
over the whole scene. Each scene keeps where every face's FER crop lies (``crops``, the square a
detector's FER-style crop should recover), its FER+ row, majority label and votes. Everything is
drawn from one seed: the same seed gives the same scenes.

:func:`match` pairs found crops with the true ones (IoU at least 0.5); :func:`detection_report`
turns the pairs into recall by face size, precision and false faces.
"""
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import FERError

#: scikit-image sample pictures with no person in them, used as scene backgrounds.
BACKGROUNDS = ("brick", "grass", "gravel", "coffee", "rocket", "chelsea", "moon", "clock", "coins", "page")
#: Face sizes of the report, in pixels of the scene (side of the FER crop).
SIZE_BINS = ((40, 80), (80, 160), (160, 320))


@dataclass
class Scene:
    """One scene: a grey uint8 picture and its faces' ground truth (arrays of one row per face)."""

    image: np.ndarray
    crops: np.ndarray    # (F, 4) float [x, y, side, side]: where each FER crop lies, before rotation
    rows: np.ndarray     # (F,) the face's index in the source arrays (e.g. a FER+ split's rows)
    labels: np.ndarray   # (F,) majority label (-1: none)
    angles: np.ndarray   # (F,) rotation in degrees


def background(name, size):
    """The scikit-image sample picture ``name`` in grey, cropped to the aspect of ``size`` (w, h) and resized."""
    from skimage import data

    if name not in BACKGROUNDS:
        raise FERError(f"unknown background {name!r}; choose one of: {', '.join(BACKGROUNDS)}")
    picture = np.asarray(getattr(data, name)())
    if picture.ndim == 3:
        picture = cv2.cvtColor(np.ascontiguousarray(picture[..., :3]), cv2.COLOR_RGB2GRAY)
    width, height = size
    h, w = picture.shape
    if w / h > width / height:  # too wide: keep the middle
        keep = int(round(h * width / height))
        picture = picture[:, (w - keep) // 2:(w - keep) // 2 + keep]
    else:
        keep = int(round(w * height / width))
        picture = picture[(h - keep) // 2:(h - keep) // 2 + keep]
    return cv2.resize(picture.astype(np.uint8), (width, height), interpolation=cv2.INTER_AREA)


def _feathered_mask(side):
    """An alpha mask: 1 inside, falling to 0 over the outer tenth, so no hard square edge is pasted."""
    ramp = np.clip(np.minimum(np.arange(side), np.arange(side)[::-1]) / max(1.0, 0.1 * side), 0, 1)
    return np.minimum.outer(ramp, ramp).astype(np.float32)


def _overlaps(square, placed, margin=0.1):
    x, y, s = square
    for px, py, ps in placed:
        gap = margin * max(s, ps)
        if x < px + ps + gap and px < x + s + gap and y < py + ps + gap and py < y + s + gap:
            return True
    return False


def make_scene(faces, labels, rng, size=(640, 480), num_faces=(1, 4), sides=(40, 300), max_angle=10.0,
               backgrounds=BACKGROUNDS):
    """One scene of 1 to ``num_faces[1]`` faces drawn from ``faces`` (N, 48, 48) uint8; see the module notes."""
    width, height = size
    canvas = background(backgrounds[rng.integers(len(backgrounds))], size).astype(np.float32)
    wanted = int(rng.integers(num_faces[0], num_faces[1] + 1))
    largest = min(sides[1], int(0.9 * min(width, height)))
    placed, rows, angles = [], [], []
    for _ in range(wanted * 20):  # a few tries each for a free spot
        if len(placed) == wanted:
            break
        side = int(round(np.exp(rng.uniform(np.log(sides[0]), np.log(largest)))))
        x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        if _overlaps((x, y, side), placed):
            continue
        row = int(rng.integers(len(faces)))
        angle = float(rng.uniform(-max_angle, max_angle))
        face = cv2.resize(faces[row], (side, side), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        face = face * rng.uniform(0.75, 1.25) + rng.uniform(-25, 25)  # the face's own lighting
        turn = cv2.getRotationMatrix2D((side / 2.0, side / 2.0), angle, 1.0)
        face = cv2.warpAffine(face, turn, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        alpha = cv2.warpAffine(_feathered_mask(side), turn, (side, side), flags=cv2.INTER_LINEAR)
        region = canvas[y:y + side, x:x + side]
        region[:] = alpha * face + (1 - alpha) * region
        placed.append((x, y, side))
        rows.append(row)
        angles.append(angle)
    sigma = rng.uniform(0.0, 1.2)
    if sigma > 0.3:
        canvas = cv2.GaussianBlur(canvas, (0, 0), sigma)
    canvas += rng.normal(0.0, rng.uniform(0.0, 4.0), canvas.shape).astype(np.float32)
    crops = np.array([[x, y, s, s] for x, y, s in placed], dtype=np.float64).reshape(-1, 4)
    rows = np.array(rows, dtype=np.int64)
    return Scene(np.clip(canvas, 0, 255).astype(np.uint8), crops, rows, np.asarray(labels)[rows],
                 np.array(angles))


def make_scenes(faces, labels, num_scenes, seed=0, **options):
    """``num_scenes`` scenes (:func:`make_scene`), the same ones for the same seed."""
    faces = np.asarray(faces)
    if faces.ndim != 3 or faces.dtype != np.uint8 or len(faces) == 0:
        raise FERError(f"faces must be a non-empty (N, H, W) uint8 array, got {faces.dtype} {faces.shape}")
    rng = np.random.default_rng(seed)
    return [make_scene(faces, labels, rng, **options) for _ in range(num_scenes)]


def iou(a, b):
    """Intersection over union of boxes ``[x, y, w, h]``: (len(a), len(b))."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    y1 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match(truth, found, threshold=0.5):
    """Greedy one-to-one pairs ``(true index, found index)`` with IoU >= ``threshold``, best first."""
    overlap = iou(truth, found)
    pairs = []
    while overlap.size and overlap.max() >= threshold:
        t, f = np.unravel_index(int(overlap.argmax()), overlap.shape)
        pairs.append((int(t), int(f)))
        overlap[t, :], overlap[:, f] = -1, -1
    return pairs


def detection_report(scenes, found_crops, threshold=0.5, size_bins=SIZE_BINS):
    """Recall by face size, overall recall and precision, for the FER crops ``found_crops`` (one
    (K, 4) array per scene, e.g. ``detector.crop_box`` of each detected box) against the truth."""
    hits = {bin_: [0, 0] for bin_ in size_bins}
    true_total = found_total = matched = 0
    for scene, found in zip(scenes, found_crops):
        pairs = match(scene.crops, found, threshold)
        got = {t for t, _ in pairs}
        for t, side in enumerate(scene.crops[:, 2]):
            for low, high in size_bins:
                if low <= side < high:
                    hits[(low, high)][0] += t in got
                    hits[(low, high)][1] += 1
        true_total += len(scene.crops)
        found_total += len(found)
        matched += len(pairs)
    return {"recall": matched / max(1, true_total), "precision": matched / max(1, found_total),
            "faces": true_total, "found": found_total,
            "recall_by_size": {f"{low}-{high} px": (h / n if n else float("nan"), n) for (low, high), (h, n) in hits.items()}}
