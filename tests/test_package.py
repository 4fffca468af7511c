"""`import ferlib` is light: it needs neither MXNet nor OpenCV, and loads submodules on first use."""
import subprocess
import sys


def imported_after(code):
    out = subprocess.run([sys.executable, "-c", f"{code}; import sys; print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_import_ferlib_loads_no_heavy_module():
    modules = imported_after("import ferlib")
    assert not {"mxnet", "cv2", "papermill", "ferlib.synth", "ferlib.demo", "ferlib.data"} & modules


def test_names_and_submodules_load_on_first_use():
    modules = imported_after("import ferlib; ferlib.EMOTIONS; ferlib.data")
    assert {"ferlib.labels", "ferlib.data", "mxnet"} <= modules
    import ferlib

    assert ferlib.EMOTIONS[0] == "neutral" and "train" in dir(ferlib)
