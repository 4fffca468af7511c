"""``python -m ferlib.install``: ferlib's packages and MXNet 1.9.1, without changing what is there.

One installer for every place the tutorial runs: ``make setup`` (a fresh ``.venv``),
the first cell of every notebook on Colab, and anyone's own environment::

    python -m ferlib.install                       # GPU build if a GPU it can use is here, else CPU
    python -m ferlib.install --device cpu --extras serve,notebook,dev
    python -m ferlib.install --dry-run             # print the plan, install nothing

What it does, in order:

1. ``pip install -e REPO[extras]``: ferlib and its declared dependencies, under a
   constraints file that pins numpy and every package this process has already
   imported to the installed version, so nothing loaded is swapped underneath it
   and numpy is never downgraded (``pip`` keeps whatever already satisfies).
2. MXNet 1.9.1 -- ``mxnet`` (CPU) or ``mxnet-cu112`` plus the ``nvidia-*-cu11``
   wheels of :data:`ferlib.cuda.CUDA_WHEELS` -- and gluoncv 0.10.5 with
   ``--no-deps``. Both are final releases whose metadata asks for what ferlib
   no longer needs: MXNet for ``numpy<2`` (which would downgrade Colab's numpy,
   and has no wheel for Python 3.13) and ``graphviz<0.9`` (only for
   ``mx.viz``), gluoncv for ``opencv-python`` (a second package writing the
   ``cv2`` that ``opencv-python-headless`` already provides). Their real
   dependencies are ferlib's own.
3. Those stale requirements are then relaxed in the installed metadata
   (:data:`STALE_REQUIREMENTS`), so that ``pip check`` is clean and later
   ``pip install`` runs do not complain about them.
4. On Colab, Java for multi-model-server when it is missing (``--extras serve``).

If pip can only succeed by changing a package this process has already imported,
it is installed and the installer stops with one loud line: restart, run again.

Standard library only: it runs before numpy exists.
"""
import argparse
import base64
import hashlib
import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import cuda
from ._mxnet_compat import prepare_mxnet_import
from .paths import PACKAGE_PARENT

GLUONCV = "gluoncv==0.10.5.post0"
#: Requirements in the metadata of final releases that ferlib makes untrue:
#: distribution -> {requirement name: what it becomes (None: dropped)}.
_MXNET_STALE = {"numpy": "numpy>1.16.0", "graphviz": None}
STALE_REQUIREMENTS = {cuda.MXNET_CPU: _MXNET_STALE, cuda.MXNET_GPU: _MXNET_STALE, "gluoncv": {"opencv-python": None}}
#: The extras each place gets by default.
DEFAULT_EXTRAS = {"colab": "serve", "other": "serve,notebook"}
REPO = PACKAGE_PARENT
NEVER_PIN = {"ferlib", "pip", "setuptools", "wheel"}


def on_colab():
    return "google.colab" in sys.modules


def choose_device(device="auto", gpus=None):
    """``"cpu"`` or ``"gpu"``, and a line saying why when ``auto`` picks the CPU on a GPU machine."""
    if device in ("cpu", "gpu"):
        return device, ""
    if device != "auto":
        raise SystemExit(f"--device {device!r}: choose auto, cpu or gpu")
    gpus = cuda.query_gpus() if gpus is None else gpus
    if any(g.supported for g in gpus):
        return "gpu", ""
    if gpus:
        return "cpu", (f"{', '.join(map(str, gpus))}: newer than MXNet 1.9.1's CUDA kernels "
                       f"(compute capability 5.0-8.x): installing the CPU build")
    return "cpu", ""


def pinned_installed(modules=None, everything=False):
    """``name==version`` pins of what the install must not change: every installed distribution
    (``everything``), or numpy and the distributions of the modules already imported here."""
    installed = _installed()
    if everything:
        keys = set(installed)
    else:
        top_level = {m.split(".")[0] for m in (sys.modules if modules is None else modules)}
        keys = {"numpy"} | {dist.lower() for module, dists in importlib.metadata.packages_distributions().items()
                            if module in top_level for dist in dists}
    return [f"{installed[key][0]}=={installed[key][1]}" for key in sorted(keys)
            if key in installed and key not in NEVER_PIN]


def plan(device, extras, repo=REPO, python=sys.executable, installed_build=None, constraints=None):
    """The pip commands, in order, as argument lists (``constraints``: a file path or None)."""
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    target = f"{repo}[{extras}]" if extras else str(repo)
    steps = [pip + ["-e", target] + (["-c", str(constraints)] if constraints else [])]
    build = cuda.MXNET_GPU if device == "gpu" else cuda.MXNET_CPU
    installed_build = cuda.installed_mxnet() if installed_build is None else installed_build
    if installed_build and installed_build != build:
        # Both builds write the same mxnet/ package: remove the other one first.
        steps.append([python, "-m", "pip", "uninstall", "-y", installed_build])
    steps.append(pip + ["--no-deps", f"{build}=={cuda.MXNET_VERSION}", GLUONCV])
    if device == "gpu":
        steps.append(pip + list(cuda.CUDA_WHEELS))
    return steps


def relax_stale_requirements(dist_name, stale=None):
    """Rewrite ``dist_name``'s installed METADATA per :data:`STALE_REQUIREMENTS` (and its RECORD
    line). Returns the requirement lines changed, as ``(old, new or None)``."""
    stale = STALE_REQUIREMENTS.get(dist_name, {}) if stale is None else stale
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return []
    files = {f.name: f for f in dist.files or () if f.parent.name.endswith(".dist-info")}
    if "METADATA" not in files:
        return []
    metadata_path = Path(files["METADATA"].locate())
    lines = metadata_path.read_text(encoding="utf-8").splitlines(keepends=True)
    changed, kept = [], []
    for line in lines:
        if line.startswith("Requires-Dist:") and ";" not in line:
            requirement = line.split(":", 1)[1].strip()
            name = requirement.replace("(", " ").replace("<", " ").replace(">", " ").replace("=", " ").split()[0]
            if name.lower() in stale and requirement != stale[name.lower()]:
                new = stale[name.lower()]
                changed.append((requirement, new))
                if new:
                    kept.append(f"Requires-Dist: {new}\n")
                continue
        kept.append(line)
    if changed:
        data = "".join(kept).encode("utf-8")
        metadata_path.write_bytes(data)
        if "RECORD" in files:
            _update_record(Path(files["RECORD"].locate()), metadata_path, data)
    return changed


def _update_record(record_path, changed_path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")
    relative = f"{changed_path.parent.name}/{changed_path.name}"
    lines = record_path.read_text(encoding="utf-8").splitlines()
    lines = [f"{relative},sha256={digest},{len(data)}" if line.split(",")[0] == relative else line
             for line in lines]
    record_path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _installed():
    """``{lower-case name: (name, version)}`` of the installed distributions, in one scan (the
    first one on ``sys.path`` of each name: setuptools puts its vendored copies on the path once
    imported)."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] or ""
        found.setdefault(name.lower(), (name, dist.version))
    return found


def installed_versions():
    """``{lower-case name: version}`` of the installed distributions."""
    return {key: version for key, (_, version) in _installed().items()}


def ensure_java():
    """Install a headless Java runtime with apt when ``java`` is missing (Colab runs as root)."""
    if shutil.which("java") or not shutil.which("apt-get"):
        return False
    print("installing Java for multi-model-server (apt-get install openjdk-17-jre-headless)", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "openjdk-17-jre-headless"]
    if subprocess.run(apt, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(apt, env=env, check=True, stdout=subprocess.DEVNULL)
    return True


def _run(step):
    """Run a command, its output printed line by line (so that a notebook shows it)."""
    print("$", " ".join(map(str, step)), flush=True)
    with subprocess.Popen([str(a) for a in step], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as process:
        for line in process.stdout:
            if line.strip():
                print(line, end="", flush=True)
    return process.returncode


def install(device="auto", extras=None, repo=REPO, dry_run=False, java=None):
    """Install ferlib and MXNet (see the module docstring). Returns the device installed for."""
    device, why = choose_device(device)
    if why:
        print(why, flush=True)
    extras = DEFAULT_EXTRAS["colab" if on_colab() else "other"] if extras is None else extras
    # Tried in order: change nothing installed; else nothing imported; else whatever pip needs.
    ladder = [("nothing that is installed changes", pinned_installed(everything=True)),
              ("only packages not loaded in this process may change", pinned_installed()),
              ("packages already loaded may change: a restart will be needed", None)]
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "installed.txt"
        steps = plan(device, extras, repo, constraints=constraints)
        if dry_run:
            for step in steps:
                print(" ".join(map(str, step)))
            print("constraints:", ", ".join(ladder[1][1]), "(and every other installed package first)")
            return device
        before = installed_versions()
        for rung, (meaning, pins) in enumerate(ladder):
            if pins is not None:
                constraints.write_text("\n".join(pins) + "\n", encoding="utf-8")
            if rung:
                print(f"pip could not install ferlib's requirements that way; trying again so that {meaning}",
                      flush=True)
            if _run(steps[0] if pins is not None else steps[0][:-2]) == 0:
                break
        else:
            raise SystemExit(f"ferlib.install: pip failed on: {' '.join(map(str, steps[0][:-2]))}")
        for step in steps[1:]:
            if _run(step) != 0:
                raise SystemExit(f"ferlib.install: pip failed on: {' '.join(map(str, step))}")
    importlib.invalidate_caches()
    prepare_mxnet_import()  # again: numpy or setuptools may be new in this process
    for dist_name in STALE_REQUIREMENTS:
        for old, new in relax_stale_requirements(dist_name):
            print(f"{dist_name}: requirement {old!r} -> {new or 'dropped'} (see ferlib/install.py)")
    if java or (java is None and on_colab() and "serve" in extras.split(",")):
        ensure_java()
    _report(before, installed_versions())
    return device


def _report(before, after):
    changed = {name: (before[name], version) for name, version in after.items()
               if name in before and before[name] != version}
    added = sorted(set(after) - set(before))
    if added:
        key = [n for n in (cuda.MXNET_CPU, cuda.MXNET_GPU, "gluoncv", "ferlib") if n in added]
        print(f"installed {len(added)} packages, among them " + ", ".join(f"{n} {after[n]}" for n in key))
    numpy = after.get("numpy")
    print(f"numpy {numpy} kept" if numpy and "numpy" not in changed else f"numpy now {numpy}")
    loaded = {m.split(".")[0] for m in sys.modules}
    providers = importlib.metadata.packages_distributions()
    stale = sorted(name for name in changed
                   if any(name in (d.lower() for d in providers.get(m, ())) for m in loaded))
    if changed:
        print("changed: " + ", ".join(f"{n} {a} -> {b}" for n, (a, b) in sorted(changed.items())))
    if stale:
        raise SystemExit(f"RESTART NEEDED: {', '.join(stale)} changed after this session imported it. "
                         f"Restart the runtime (Colab: Runtime > Restart session), then run this cell again.")


def colab_setup(repo):
    """The Colab branch of every notebook's first cell: make ``import ferlib`` resolve to ``repo``
    (also in child processes), install what Colab lacks, and say which device MXNet will use."""
    repo = str(Path(repo).resolve())
    if repo not in sys.path:
        sys.path.insert(0, repo)
    os.environ["FERLIB_REPO"] = repo
    # `python -m ferlib ...` started from the notebook must find the package too, not the
    # clone folder of the same name in /content (a namespace package).
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    device, _ = choose_device("auto")
    build = cuda.MXNET_GPU if device == "gpu" else cuda.MXNET_CPU
    # Running the cell again (or in the next notebook) costs nothing once all is there.
    if cuda.installed_mxnet() != build or not _ferlib_installed(repo) or not shutil.which("java"):
        install(device, extras=DEFAULT_EXTRAS["colab"], repo=repo)
    missing = cuda.prepare_mxnet()
    status = cuda.gpu_status(missing_libraries=missing)
    device = ", ".join(f"GPU {i}" for i in status.usable) or "the CPU"
    print(f"ferlib ready in {repo}: {cuda.installed_mxnet()} {cuda.MXNET_VERSION} will train on {device}"
          + (f" ({status.message})" if status.message else ""))


def _ferlib_installed(repo):
    try:
        dist = importlib.metadata.distribution("ferlib")
    except importlib.metadata.PackageNotFoundError:
        return False
    return str(repo) in (dist.read_text("direct_url.json") or "")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ferlib.install", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"],
                        help="MXNet build: auto picks the GPU build when a GPU MXNet 1.9.1 can use is here")
    parser.add_argument("--extras", default=None,
                        help="ferlib extras, comma-separated: serve, notebook, dev (default: serve,notebook; "
                             "on Colab: serve)")
    parser.add_argument("--repo", default=str(REPO), help="the ferlib repository to install (default: this one)")
    parser.add_argument("--java", action="store_true", help="also install Java with apt-get when it is missing")
    parser.add_argument("--dry-run", action="store_true", help="print the pip commands and the pins; install nothing")
    args = parser.parse_args(argv)
    install(args.device, args.extras, Path(args.repo), dry_run=args.dry_run, java=args.java or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
