"""Real photographs that come with ferlib's dependencies, for trying a model on real faces.

The project ships no photographs of its own; these two are part of packages it installs anyway:

* ``astronaut``: scikit-image's ``data.astronaut()``, Eileen Collins in 1999, a broad smile
  (public domain, NASA);
* ``grace_hopper``: matplotlib's ``grace_hopper.jpg`` sample, Rear Admiral Grace Hopper in
  uniform (public domain, U.S. Navy).
"""
import io

#: The sample photos, by name, and the package each comes from.
SAMPLE_PHOTOS = {"astronaut": "scikit-image", "grace_hopper": "matplotlib"}


def sample_photo(name):
    """The encoded bytes of one sample photo (PNG for ``astronaut``, the JPEG file for ``grace_hopper``)."""
    from .errors import FERError

    if name == "astronaut":
        from PIL import Image
        from skimage import data

        buffer = io.BytesIO()
        Image.fromarray(data.astronaut()).save(buffer, format="PNG")
        return buffer.getvalue()
    if name == "grace_hopper":
        from matplotlib import cbook

        with cbook.get_sample_data("grace_hopper.jpg") as handle:
            return handle.read()
    raise FERError(f"unknown sample photo {name!r}; choose one of: {', '.join(SAMPLE_PHOTOS)}")


def sample_photos():
    """``{name: encoded bytes}`` of every sample photo."""
    return {name: sample_photo(name) for name in SAMPLE_PHOTOS}
