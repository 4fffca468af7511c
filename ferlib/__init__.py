"""ferlib: facial emotion recognition on FER+ with Apache MXNet Gluon.

One module per stage of the notebook series::

    ferlib.data        read fer2013.csv / fer2013new.csv, the prepared cache, Gluon datasets
    ferlib.labels      the four FER+ label schemes (majority, probability, crossentropy, multi_target)
    ferlib.transforms  face crop, 64x64, augmentation and intensity normalisation
    ferlib.synth       the built-in synthetic FER-format dataset
    ferlib.utils       devices (try_gpu, try_all_gpus) and small helpers

``python -m ferlib --help`` lists the command-line verbs over the same functions.
"""
from ._numpy_compat import restore_numpy_aliases

# Must run before anything imports mxnet (see _numpy_compat for why).
restore_numpy_aliases()

from .errors import FERError  # noqa: E402
from .labels import EMOTIONS, MODES, VOTE_COLUMNS  # noqa: E402
from . import labels, transforms, data, synth, utils, demo  # noqa: E402,F401

__version__ = "0.1.0"

__all__ = ["EMOTIONS", "MODES", "VOTE_COLUMNS", "FERError", "__version__"]
