"""Fresh virtual environments of other Python versions, for the Colab and Python 3.13 tests."""
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def find_python(version):
    """A working ``python<version>`` (on PATH, or a pyenv/system install), else skip the test."""
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}*/bin/python{version}")))
    candidates += [f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
    for candidate in filter(None, candidates):
        try:
            out = subprocess.run([candidate, "-c", "import sys, venv; print(sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == str(tuple(int(x) for x in version.split("."))):
            return candidate
    pytest.skip(f"no Python {version} interpreter on this machine")


def make_venv(python, folder):
    """Create a virtual environment with an up-to-date pip; return its python."""
    subprocess.run([python, "-m", "venv", str(folder)], check=True)
    venv_python = str(Path(folder) / "bin" / "python")
    run(venv_python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--upgrade", "pip")
    return venv_python


def run(*command, cwd=None, env=None, timeout=1800):
    """Run a command; on failure, fail the test with the end of its output."""
    out = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} exited {out.returncode}:\n"
                    f"{out.stdout[-6000:]}\n{out.stderr[-6000:]}")
    return out.stdout


def installed(venv_python):
    """``{name: version}`` of the distributions installed in an environment."""
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({(d.metadata['Name'] or '').lower(): d.version for d in m.distributions()}))")
    import json

    return json.loads(run(venv_python, "-c", code))


def copy_repository(destination):
    """The repository's tracked and untracked-but-not-ignored files, as ``git clone`` would give
    them (with the working tree's changes), into ``destination``."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            target = Path(destination) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return Path(destination)


def child_env(**extra):
    """This process's environment for a child in another venv: no PYTHONPATH or venv leaking in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(Path(sys.prefix))))
    env.update({k: str(v) for k, v in extra.items()})
    return env
