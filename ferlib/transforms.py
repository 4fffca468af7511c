"""Face crop, scaling, FER+ augmentation and intensity normalisation.

The geometry and the normalisation are those of the FER+ reference code
(``img_util.py`` in github.com/microsoft/FERPlus), rewritten for speed:

* the affine warp (crop the face box, scale to ``size`` x ``size``, and for
  training shift / scale / rotate / skew / flip) is one ``cv2.warpAffine`` per
  image, with the same matrix, bilinear sampling and mirrored border as the
  reference's ``scipy.ndimage.affine_transform``;
* the normalisation (histogram equalisation to [-1, 1], then removing the
  least-squares plane ``a + b*x + c*y`` and dividing by the standard deviation)
  runs on a whole batch with numpy. The plane fit needs no matrix inversion:
  on a full pixel grid the centred x and y coordinates are orthogonal to each
  other and to the constant, so the fit is three dot products.

Besides the reference's normalisation (``ferplus``) there is the plain per-image
standardisation (``standard``: minus the mean, divided by the standard
deviation), which the ``cpu`` recipe trains with; a run records its choice in
``config.json`` and everything that uses the run preprocesses with it.

:func:`preprocess` is the one entry point used by training, evaluation and the
model server, so all three see exactly the same pixels.
"""
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from .errors import FERError

#: Input side of the FER+ network.
INPUT_SIZE = 64

#: The intensity normalisations (:func:`normalize`); the first is the default, the FER+ reference's.
NORMALIZATIONS = ("ferplus", "standard")
DEFAULT_NORMALIZATION = NORMALIZATIONS[0]


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random training distortion (defaults: the FER+ paper's).

    Attributes
    ----------
    max_shift : float
        Largest shift, as a fraction of the output size, in x and in y.
    max_scale : float
        Largest zoom factor; each axis zooms in or out by up to this.
    max_angle : float
        Largest rotation in degrees, either way.
    max_skew : float
        Largest shear in x and in y.
    flip : bool
        Mirror left-right with probability 1/2.
    whole_pixels : bool
        Round the shifts to whole pixels. Without rotation, skew or zoom, and with the face box
        as large as the output, the face is then copied, not resampled: a random crop of the
        mirror-padded face, which keeps its sharpness.
    erase : float
        Probability of random erasing (Zhong et al. 2017, :func:`erase_patches`): one rectangle
        of the normalised face set to 0, its mean, so that the network cannot lean on any one part
        of the face. 0: never (the paper's).
    mixup : float
        Mixup's alpha (Zhang et al. 2018, :func:`mix_pairs`): each face of a batch is blended with
        another of the same batch, and so are their targets, with a weight drawn from
        Beta(alpha, alpha). 0: never (the paper's).
    cutmix : float
        Probability of CutMix (Yun et al. 2019, :func:`cut_pairs`): a rectangle of the face, of an
        area drawn uniformly from 0 to the whole, replaced by the same rectangle of another face of
        the batch, and the targets blended by the areas. 0: never (the paper's). Not with mixup.
    """

    max_shift: float = 0.08
    max_scale: float = 1.05
    max_angle: float = 20.0
    max_skew: float = 0.05
    flip: bool = True
    whole_pixels: bool = False
    erase: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.erase <= 1.0:
            raise FERError(f"augmentation erase is a probability, from 0 to 1; got {self.erase!r}")
        if not self.mixup >= 0.0:
            raise FERError(f"augmentation mixup is Beta's alpha, 0 (off) or more; got {self.mixup!r}")
        if not 0.0 <= self.cutmix <= 1.0:
            raise FERError(f"augmentation cutmix is a probability, from 0 to 1; got {self.cutmix!r}")
        if self.cutmix and self.mixup:
            raise FERError("augmentation mixup and cutmix both blend the targets of a batch: choose one")

    @property
    def blends_targets(self):
        """True when a face's target is blended with another's (mixup, cutmix)."""
        return bool(self.mixup or self.cutmix)


#: The FER+ training distortion.
FERPLUS_AUGMENTATION = Augmentation()


@dataclass
class WarpParams:
    """Per-image distortion parameters, arrays of shape (N,). Identity when zero/one."""

    shift_x: np.ndarray
    shift_y: np.ndarray
    scale_x: np.ndarray
    scale_y: np.ndarray
    angle: np.ndarray
    skew_x: np.ndarray
    skew_y: np.ndarray
    flip: np.ndarray

    @classmethod
    def identity(cls, n):
        zeros, ones = np.zeros(n), np.ones(n)
        return cls(zeros, zeros, ones, ones, zeros, zeros, zeros, np.zeros(n, dtype=bool))

    @classmethod
    def draw(cls, n, size, rng, augmentation=FERPLUS_AUGMENTATION):
        """Draw ``n`` independent distortions as the reference does, from ``rng``."""
        a = augmentation
        u = rng.uniform(-1.0, 1.0, size=(5, n))
        zoom = rng.uniform(1.0, a.max_scale, size=(2, n))
        zoom = np.where(rng.random((2, n)) < 0.5, 1.0 / zoom, zoom)
        shift = size * a.max_shift * u[:2]
        if a.whole_pixels:
            shift = np.round(shift)
        return cls(
            shift_x=shift[0],
            shift_y=shift[1],
            scale_x=zoom[0],
            scale_y=zoom[1],
            angle=a.max_angle * u[2],
            skew_x=a.max_skew * u[3],
            skew_y=a.max_skew * u[4],
            flip=(rng.random(n) < 0.5) & a.flip,
        )


def whole_image_boxes(shapes):
    """Boxes ``[x, y, w, h]`` covering each image entirely, for shapes ``(h, w)``."""
    return np.array([[0.0, 0.0, w, h] for h, w in shapes], dtype=np.float64)


def warp_matrices(boxes, size, params):
    """The 2x3 maps from output pixel (x, y) to source pixel (x, y), shape (N, 2, 3).

    Same geometry as the reference ``crop_img``: the box centre goes to the
    output centre plus the shift, and the box spans the output, scaled,
    rotated and skewed about that centre.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x, y, w, h = boxes.T
    centre_in = np.stack([y + h / 2.0, x + w / 2.0], axis=1)  # (row, col)
    centre_out = np.stack([size / 2.0 + params.shift_y, size / 2.0 + params.shift_x], axis=1)
    s_y = params.scale_y * (h - 1.0) / (size - 1.0)
    s_x = params.scale_x * (w - 1.0) / (size - 1.0)
    ang = np.deg2rad(params.angle)
    cos, sin = np.cos(ang), np.sin(ang)
    n = len(boxes)
    rotation = np.stack([np.stack([cos, -sin], 1), np.stack([sin, cos], 1)], 1)
    skew_y = np.tile(np.eye(2), (n, 1, 1))
    skew_y[:, 0, 1] = params.skew_y
    skew_x = np.tile(np.eye(2), (n, 1, 1))
    skew_x[:, 1, 0] = params.skew_x
    scale = np.zeros((n, 2, 2))
    scale[:, 0, 0], scale[:, 1, 1] = s_y, s_x
    # Row-vector form of the reference: source = output @ t + offset, in (row, col).
    t = rotation @ skew_y @ skew_x @ scale
    offset = centre_in - np.einsum("ni,nij->nj", centre_out, t)
    # Column form in (x, y) order for OpenCV: swap both axes of t^T.
    m = np.empty((n, 2, 3))
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = t[:, 1, 1], t[:, 0, 1], offset[:, 1]
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = t[:, 1, 0], t[:, 0, 0], offset[:, 0]
    return m


def _as_image_list(images):
    if isinstance(images, np.ndarray) and images.ndim == 2:
        return [images]
    if isinstance(images, np.ndarray) and images.ndim == 3:
        return images  # a batch of same-size images, indexed as a list
    if isinstance(images, (list, tuple)):
        return images
    raise FERError(f"expected a 2-D grey image, an (N, H, W) batch or a list of images, got {type(images).__name__}")


def warp_faces(images, boxes=None, size=INPUT_SIZE, params=None):
    """Crop each face box and warp it to ``size`` x ``size`` (uint8, shape (N, size, size)).

    Parameters
    ----------
    images : ndarray (H, W) or (N, H, W) of uint8, or a list of 2-D uint8 arrays
        Grey images; the list form allows images of different sizes.
    boxes : array-like (N, 4), optional
        Face boxes ``[x, y, w, h]`` in pixels; default the whole image.
    size : int
        Output side.
    params : WarpParams, optional
        Distortions; default none (evaluation).
    """
    images = _as_image_list(images)
    n = len(images)
    if boxes is None:
        boxes = whole_image_boxes([im.shape[:2] for im in images])
    if params is None:
        params = WarpParams.identity(n)
    matrices = warp_matrices(boxes, size, params)
    out = np.empty((n, size, size), dtype=np.uint8)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    for i in range(n):
        warped = cv2.warpAffine(images[i], matrices[i], (size, size), flags=flags, borderMode=cv2.BORDER_REFLECT)
        out[i] = warped[:, ::-1] if params.flip[i] else warped
    return out


@lru_cache(maxsize=8)
def _plane_basis(height, width):
    """Orthonormal basis of the planes ``a + b*x + c*y`` on the pixel grid, float32 (H*W, 3).

    The constant and the centred x and y coordinates are mutually orthogonal on
    a full grid, so normalising them is all the orthogonalisation needed.
    """
    y, x = np.mgrid[0:height, 0:width]
    columns = [np.ones(height * width)] + [c.ravel() - c.mean() for c in (x, y)]
    return np.stack([c / np.linalg.norm(c) for c in columns], axis=1).astype(np.float32)


def check_normalization(normalization):
    """``normalization`` if it is one of :data:`NORMALIZATIONS`, else a FERError listing them."""
    if normalization not in NORMALIZATIONS:
        raise FERError(f"unknown normalization {normalization!r}; choose one of: {', '.join(NORMALIZATIONS)}")
    return normalization


def normalization_of(config):
    """The normalisation of a run's ``config.json`` dict (runs from before the setting: ``ferplus``)."""
    return check_normalization(config.get("normalization", DEFAULT_NORMALIZATION))


def normalize(faces, normalization=DEFAULT_NORMALIZATION):
    """Intensity normalisation of a batch of uint8 faces (N, H, W) or one face; float32, same shape.

    ``ferplus`` (the FER+ reference's): histogram equalisation maps each image's grey levels
    through its own CDF to (-1, 1]; then the best-fitting plane ``a + b*x + c*y`` (uneven
    lighting) is subtracted. ``standard``: each image minus its mean. Both then divide by the
    standard deviation (left as is when that is below 1e-6, e.g. a flat image).
    """
    check_normalization(normalization)
    faces = np.asarray(faces)
    if faces.dtype != np.uint8:
        raise FERError(f"normalize expects uint8 faces, got {faces.dtype}")
    squeeze = faces.ndim == 2
    batch = faces[None] if squeeze else faces
    n, height, width = batch.shape
    if normalization == "standard":
        residual = batch.reshape(n, -1).astype(np.float32)
        residual -= residual.mean(axis=1, keepdims=True)
    else:
        residual = _equalized_without_plane(batch)
    std = np.sqrt(np.einsum("ij,ij->i", residual, residual) / residual.shape[1])[:, None]
    residual = np.divide(residual, std, out=residual, where=std > 1e-6)
    out = residual.reshape(n, height, width)
    return out[0] if squeeze else out


def _equalized_without_plane(batch):
    """The FER+ histogram equalisation of uint8 (N, H, W), minus its least-squares plane; (N, H*W)."""
    n, height, width = batch.shape
    # Give each image its own 256 bins: one index serves the histogram and the lookup.
    index = batch.reshape(n, -1).astype(np.int32)
    index += (np.arange(n, dtype=np.int32) * 256)[:, None]
    cdf = np.bincount(index.ravel(), minlength=256 * n).reshape(n, 256).cumsum(axis=1).astype(np.float32)
    cdf *= 2.0 / cdf[:, -1:]
    cdf -= 1.0
    residual = cdf.ravel()[index]
    basis = _plane_basis(height, width)
    residual -= (residual @ basis) @ basis.T
    return residual


#: Random erasing's rectangle: its area as a fraction of the face, and its height / width.
ERASE_AREA = (0.02, 0.25)
ERASE_ASPECT = (0.3, 3.3)


def erase_patches(x, rng, probability):
    """Random erasing of normalised faces ``x`` (N, H, W), in place: with ``probability``, one
    rectangle of each face, of :data:`ERASE_AREA` and :data:`ERASE_ASPECT`, set to 0.

    Every face draws its rectangle whether or not it is erased, so the random stream does not
    depend on which faces were.
    """
    n, height, width = x.shape
    erased = rng.random(n) < probability
    area = rng.uniform(*ERASE_AREA, size=n) * height * width
    aspect = np.exp(rng.uniform(*np.log(ERASE_ASPECT), size=n))
    h = np.clip(np.round(np.sqrt(area * aspect)), 1, height).astype(int)
    w = np.clip(np.round(np.sqrt(area / aspect)), 1, width).astype(int)
    top = (rng.random(n) * (height - h + 1)).astype(int)
    left = (rng.random(n) * (width - w + 1)).astype(int)
    for i in np.flatnonzero(erased):
        x[i, top[i]:top[i] + h[i], left[i]:left[i] + w[i]] = 0.0
    return x


def mix_pairs(x, y, rng, alpha):
    """Mixup (Zhang et al. 2018): inputs ``x`` (N, ...) and targets ``y`` (N, C), each row blended
    with another row of the batch, ``w * row + (1 - w) * partner``, ``w ~ Beta(alpha, alpha)`` per row.

    The partner of row ``i`` is row ``order[i]`` of a random permutation (a row may meet itself,
    which leaves it as it is). Returns new arrays; the targets stay distributions when they were.
    """
    n = len(x)
    order = rng.permutation(n)
    weight = rng.beta(alpha, alpha, size=n)

    def blend(a):
        w = weight.astype(a.dtype).reshape((n,) + (1,) * (a.ndim - 1))
        return w * a + (1 - w) * a[order]

    return blend(x), blend(y)


def cut_pairs(x, y, rng, probability):
    """CutMix (Yun et al. 2019) of faces ``x`` (N, ..., H, W) and targets ``y`` (N, C): with
    ``probability``, a rectangle of row ``i`` is replaced by the same rectangle of row ``order[i]``
    of a random permutation, and its target becomes ``w * own + (1 - w) * partner``, ``w`` the
    share of the face left as it was.

    The rectangle's area is a uniform fraction of the face, its sides in the face's proportions,
    its centre anywhere, clipped at the borders (so ``w`` is counted after clipping). Every row
    draws whether or not it is cut, so the random stream does not depend on which were. Returns
    new arrays; the targets stay distributions when they were.
    """
    n, height, width = len(x), x.shape[-2], x.shape[-1]
    order = rng.permutation(n)
    cut = rng.random(n) < probability
    side = np.sqrt(rng.random(n))  # the rectangle's sides, as fractions of the face's
    centre_y, centre_x = rng.random(n) * height, rng.random(n) * width
    top = np.clip(np.round(centre_y - side * height / 2), 0, height).astype(int)
    bottom = np.clip(np.round(centre_y + side * height / 2), 0, height).astype(int)
    left = np.clip(np.round(centre_x - side * width / 2), 0, width).astype(int)
    right = np.clip(np.round(centre_x + side * width / 2), 0, width).astype(int)
    mixed_x, mixed_y = x.copy(), y.copy()
    for i in np.flatnonzero(cut):
        mixed_x[i, ..., top[i]:bottom[i], left[i]:right[i]] = x[order[i], ..., top[i]:bottom[i], left[i]:right[i]]
        kept = 1.0 - (bottom[i] - top[i]) * (right[i] - left[i]) / (height * width)
        mixed_y[i] = kept * y[i] + (1.0 - kept) * y[order[i]]
    return mixed_x, mixed_y


def preprocess(images, boxes=None, size=INPUT_SIZE, augmentation=None, rng=None,
               normalization=DEFAULT_NORMALIZATION):
    """Images and face boxes to network input: float32 of shape (N, 1, size, size).

    Parameters
    ----------
    images, boxes, size
        As in :func:`warp_faces`.
    augmentation : Augmentation, optional
        Draw a fresh random distortion per image (training); ``None`` for evaluation.
    rng : numpy.random.Generator, optional
        Source of the distortions (required with ``augmentation``).
    normalization : str
        One of :data:`NORMALIZATIONS` (see :func:`normalize`): the run's ``normalization``.
    """
    check_normalization(normalization)
    images = _as_image_list(images)
    params = None
    if augmentation is not None:
        if rng is None:
            raise FERError("augmentation draws random distortions: pass rng=numpy.random.default_rng(seed)")
        params = WarpParams.draw(len(images), size, rng, augmentation)
    x = normalize(warp_faces(images, boxes, size, params), normalization)
    if augmentation is not None and augmentation.erase:
        erase_patches(x, rng, augmentation.erase)
    return x[:, None]


def to_grey_uint8(image):
    """Any image array (grey, RGB, RGBA, 16-bit, float in [0, 1]) to 2-D grey uint8."""
    image = np.asarray(image)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype.kind == "f":
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2GRAY)
    elif image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim != 2:
        raise FERError(f"cannot make a grey image from an array of shape {image.shape}")
    return np.ascontiguousarray(image)
