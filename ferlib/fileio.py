"""Files that are never left half-written, and errors about paths in plain words.

Every file ferlib writes (caches, run folders, evaluations, synthetic data) is
written to a temporary file beside it, synced, and moved into place
(:func:`atomic_save`), so a crash leaves the old file or the new one, never a
part. Standard library only: the model archive carries this module.
"""
import hashlib
import json
import os
import tempfile
from pathlib import Path

from .errors import FERError


def os_reason(err):
    """Why an ``OSError`` on a path happened, in a few plain words.

    A file where a folder should be (``out/x`` when ``out`` is a file) gets
    named, since the bare ``File exists`` / ``Not a directory`` hides it.
    """
    if isinstance(err, (FileExistsError, NotADirectoryError)) and err.filename is not None:
        blocker = _file_in_the_way(err.filename)
        if blocker is not None:
            return f"{'it' if blocker == Path(err.filename) else blocker} is a file, not a folder"
    if isinstance(err, PermissionError):
        return "permission denied"
    return err.strerror or str(err)


def _file_in_the_way(path):
    """The first existing non-folder among ``path`` and its parents, from the root down."""
    path = Path(path)
    for candidate in reversed([path, *path.parents]):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return None


def ensure_dir(path):
    """Create folder ``path`` and its parents; a folder that cannot exist is a FERError naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FERError(f"cannot create the folder {path}: {os_reason(err)}") from None
    return path


def _temp_beside(path):
    """A new empty temporary file in ``path``'s folder (created if missing), closed."""
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise FERError(f"cannot write {path}: {os_reason(err)}") from None
    os.close(fd)
    return tmp


def _move_into_place(tmp, path):
    try:
        os.replace(tmp, path)
    except OSError as err:
        if isinstance(err, IsADirectoryError) or Path(path).is_dir():
            raise FERError(f"cannot write {path}: it is a folder") from None
        raise FERError(f"cannot write {path}: {os_reason(err)}") from None


def fsync_file(path):
    """Make the content of file ``path`` durable (a power cut, not only a kill)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path):
    """Make the renames inside folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` so that a crash never leaves a partial file."""
    path = Path(path)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_save(path, write)


def atomic_write_json(path, obj):
    """JSON version of :func:`atomic_write_bytes` (indented, UTF-8)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def atomic_save(path, save_fn):
    """Call ``save_fn(tmp_path)`` (e.g. ``net.save_parameters``) and move it into place atomically.

    A folder or file that cannot be created is a :class:`FERError` naming
    ``path``; the temporary file never outlives an error.
    """
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        save_fn(tmp)
        fsync_file(tmp)  # on disk before the rename, so a power cut leaves old or new
        _move_into_place(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def file_sha256(path):
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
