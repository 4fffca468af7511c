"""The layout of the two FER+ files, as Kaggle and Microsoft publish them: one owner for it.

``fer2013.csv`` (Kaggle): ``emotion,pixels,Usage``, one 48x48 grey face per row
(2,304 space-separated grey levels), the original 7-class label, and the split.
``fer2013new.csv`` (Microsoft, FER+): ``Usage,Image name`` and the 10 crowd votes
of :data:`ferlib.labels.VOTE_COLUMNS`, row for row the same faces.

The reader (:mod:`ferlib.data`), the writer of the synthetic set (:mod:`ferlib.synth`),
the plots and the face crops of the model server (48x48, as FER2013 frames faces) use these.
"""
from .labels import VOTE_COLUMNS

#: Side of a FER2013 image, in pixels: faces are cut out at this resolution.
IMAGE_SIDE = 48
PIXELS = IMAGE_SIDE * IMAGE_SIDE
#: Usage values of fer2013.csv, in split order, and the FER+ split names.
USAGES = ("Training", "PublicTest", "PrivateTest")
SPLITS = ("train", "val", "test")
SPLIT_OF_USAGE = dict(zip(USAGES, SPLITS))
USAGE_OF_SPLIT = dict(zip(SPLITS, USAGES))
FER2013_HEADER = ("emotion", "pixels", "Usage")
FERPLUS_HEADER = ("Usage", "Image name") + VOTE_COLUMNS
#: The original 7 FER2013 classes, in their code order.
FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
