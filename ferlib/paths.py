"""The repository root, and the notebooks' paths relative to it.

The notebooks' parameters name folders relative to the repository root
(``"data"``, ``"build/01_data"``), so that they mean the same folder whether
the kernel starts in ``notebooks/`` (JupyterLab, papermill), in the repository
root, or in Colab's ``/content`` beside a clone.
"""
import os
from pathlib import Path

#: The folder holding the ferlib package: the repository root when ferlib runs from a clone.
PACKAGE_PARENT = Path(__file__).resolve().parents[1]


def repo_root():
    """The ferlib repository this package runs from (``$FERLIB_REPO`` or the package's parent
    folder when it holds ``notebooks/``), else the working directory (an installed ferlib)."""
    for candidate in (os.environ.get("FERLIB_REPO"), PACKAGE_PARENT):
        if candidate and (Path(candidate) / "ferlib" / "__init__.py").is_file() \
                and (Path(candidate) / "notebooks").is_dir():
            return Path(candidate).resolve()
    return Path.cwd()


def resolve(path):
    """``path`` made absolute against :func:`repo_root` (``None`` stays ``None``; ``~`` expands)."""
    if path is None:
        return None
    path = Path(path).expanduser()
    return path if path.is_absolute() else (repo_root() / path).resolve()
