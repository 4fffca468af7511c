"""Defects found by probing the command line and training: crash-safe checkpoints, the
run-folder lock, quiet overwrites, vote counts, and one-line errors for bad paths and files.

A "kill" is simulated by copying the run folder at the chosen instant (what the disk
holds when the process dies there) and then stopping the write; the copy is resumed.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from ferlib import FERError, cli
from ferlib import data as fer_data
from ferlib import evaluate as fer_eval
from ferlib import losses as fer_losses
from ferlib import train as fer_train
from ferlib.errors import DataFormatError

import mxnet as mx  # noqa: E402  (after ferlib)

TINY = dict(model="vgg13", model_kwargs={"width": 0.125, "batch_norm": True}, input_size=32, batch_size=32,
            lr=0.01, gpus="cpu", progress=False)
TINY_CLI = ["--model", "vgg13", "--width", "0.125", "--batch-norm", "--input-size", "32", "--lr", "0.01",
            "--gpus", "cpu", "--quiet"]  # the settings of TINY: a --resume with them is accepted
CHECKPOINT_FILES = {"checkpoint.json", "checkpoint.params", "checkpoint.states"}
FER_HEADER = "emotion,pixels,Usage"
PLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"


class Killed(BaseException):
    """The simulated kill: a BaseException, so no ``except Exception`` handler stops it."""


def _stray(folder):
    """Files an interrupted write leaves behind (temporary or unreferenced versioned files)."""
    return sorted(p.name for p in Path(folder).iterdir()
                  if p.name.endswith(".tmp") or p.name.startswith(("checkpoint-", ".export-")))


def _params(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


def _cli(capsys, *argv):
    """``python -m ferlib`` in this process: exit status and stderr."""
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _assert_one_line_error(code, err, *fragments):
    """Exit status 2 and, after any progress bar, one line ``error: ...`` holding ``fragments``."""
    assert code == 2, err
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert str(fragment) in last, (fragment, err)


# --------------------------------------------------------------------------- 1. crash-safe checkpoints


@pytest.fixture(scope="module")
def two_epochs(synthetic_cache, tmp_path_factory):
    """An uninterrupted two-epoch run, the reference of the resumed ones."""
    out = tmp_path_factory.mktemp("whole") / "run"
    fer_train.train(synthetic_cache, out, num_epochs=2, **TINY)
    return out


@pytest.mark.parametrize("kill_before", [0, 1, 2])
def test_a_kill_during_the_epoch_2_checkpoint_resumes_and_leaves_no_orphans(
        synthetic_cache, two_epochs, tmp_path, monkeypatch, kill_before):
    """Killed just before the 1st, 2nd or 3rd rename of epoch 2's checkpoint write: the copy of
    the folder at that instant resumes (from epoch 1 or 2) to the uninterrupted run's weights,
    and no temporary or versioned file is left over."""
    out, snapshot = tmp_path / "run", tmp_path / "at-kill"
    real_replace, seen = os.replace, []

    def replace(src, dst, **kwargs):
        if Path(dst).name.startswith("checkpoint"):
            seen.append(dst)
            if len(seen) == 3 + kill_before + 1:  # epoch 1 makes 3 checkpoint renames
                shutil.copytree(out, snapshot)
                raise Killed
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        fer_train.train(synthetic_cache, out, num_epochs=2, **TINY)
    monkeypatch.setattr(os, "replace", real_replace)

    resumed = fer_train.train(synthetic_cache, snapshot, num_epochs=2, resume=True, **TINY)
    assert [r["epoch"] for r in resumed["history"]] == [1, 2]
    assert _stray(snapshot) == []
    assert fer_train.load_checkpoint(snapshot)["epoch"] == 2
    expected, got = _params(two_epochs / "checkpoint.params"), _params(snapshot / "checkpoint.params")
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=1e-5, err_msg=key)


def _net_and_trainer(seed):
    net = fer_train.build_net("vgg13", {"width": 0.125, "input_size": 32}, [mx.cpu()], seed=seed)
    trainer = fer_train.make_trainer(net, lr=0.1)
    x = mx.nd.array(np.random.default_rng(seed).normal(size=(4, 1, 32, 32)))
    y = mx.nd.array(np.eye(8)[[0, 1, 2, 3]])
    fer_train.train_batch(net, trainer, fer_losses.get_loss("crossentropy"), x, y, [mx.cpu()])
    return net, trainer


class KillAt:
    """Counts the steps of a checkpoint write (each file saved, each rename) and, at step
    ``k``, copies the folder as a kill there would leave it (a file being saved: half
    written) and raises :class:`Killed`."""

    def __init__(self, monkeypatch, folder, snapshot, k=None):
        self.folder, self.snapshot, self.k, self.steps, self.committed = folder, snapshot, k, 0, False
        real_replace = os.replace
        real_save_parameters = mx.gluon.Block.save_parameters
        real_save_states = mx.gluon.Trainer.save_states

        def replace(src, dst, **kwargs):
            self._step()
            real_replace(src, dst, **kwargs)
            self.committed |= Path(dst).name == "checkpoint.json"

        def saving(real):
            def save(obj, fname, *args, **kwargs):
                self._step(partial=fname)
                return real(obj, fname, *args, **kwargs)
            return save

        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(mx.gluon.Block, "save_parameters", saving(real_save_parameters))
        monkeypatch.setattr(mx.gluon.Trainer, "save_states", saving(real_save_states))

    def _step(self, partial=None):
        if self.steps == self.k:
            if partial is not None:
                Path(partial).write_bytes(b"\0" * 64)  # the kill came in the middle of this file
            shutil.copytree(self.folder, self.snapshot)
            raise Killed
        self.steps += 1


def test_a_kill_at_every_step_of_save_checkpoint_leaves_one_complete_checkpoint(tmp_path, monkeypatch):
    net1, trainer1 = _net_and_trainer(1)
    net2, trainer2 = _net_and_trainer(2)
    weights = {1: {k: v.data().asnumpy() for k, v in net1._collect_params_with_prefix().items()},
               2: {k: v.data().asnumpy() for k, v in net2._collect_params_with_prefix().items()}}
    base = tmp_path / "base"
    base.mkdir()
    fer_train.save_checkpoint(base, net1, trainer1, {"epoch": 1, "best_epoch": 1, "best_val_acc": 0.5})

    counter = tmp_path / "count"
    shutil.copytree(base, counter)
    with monkeypatch.context() as m:
        count = KillAt(m, counter, None)
        fer_train.save_checkpoint(counter, net2, trainer2, {"epoch": 2, "best_epoch": 1, "best_val_acc": 0.5})
    assert count.steps >= 5  # two files saved, the json and the two files renamed

    for k in range(count.steps):
        folder, snapshot = tmp_path / f"run-{k}", tmp_path / f"killed-{k}"
        shutil.copytree(base, folder)
        with monkeypatch.context() as m:
            kill = KillAt(m, folder, snapshot, k)
            with pytest.raises(Killed):
                fer_train.save_checkpoint(folder, net2, trainer2, {"epoch": 2, "best_epoch": 1, "best_val_acc": 0.5})
        # What --resume does: read the checkpoint, then make the folder whole under the lock.
        info = fer_train.load_checkpoint(snapshot)
        epoch = 2 if kill.committed else 1
        assert info["epoch"] == epoch, k
        with fer_train.hold_run_lock(snapshot):
            fer_train.settle_checkpoint(snapshot, info)
        net = fer_train.build_net("vgg13", {"width": 0.125, "input_size": 32}, [mx.cpu()], seed=9)
        net.load_parameters(str(snapshot / "checkpoint.params"))
        for key, value in net._collect_params_with_prefix().items():
            np.testing.assert_array_equal(value.data().asnumpy(), weights[epoch][key], err_msg=f"step {k}: {key}")
        fer_train.make_trainer(net, lr=0.1).load_states(str(snapshot / "checkpoint.states"))
        assert _stray(snapshot) == [], k
        # The next save leaves exactly one checkpoint, and nothing else.
        fer_train.save_checkpoint(snapshot, net2, trainer2, {"epoch": 3, "best_epoch": 1, "best_val_acc": 0.5})
        assert {p.name for p in snapshot.iterdir()} - {"train.lock"} == CHECKPOINT_FILES, k
        assert fer_train.load_checkpoint(snapshot)["epoch"] == 3


# --------------------------------------------------------------------------- 2. the run-folder lock


def test_a_folder_still_training_is_refused_to_a_second_process(synthetic_cache, tmp_path):
    """While train() runs here, `train --resume` and `train --overwrite` in other processes are
    refused with the folder and this pid; the lock is gone once train() returns."""
    out = tmp_path / "run"
    answers = []

    def second_process(record):
        if record["epoch"] == 1:
            for flag in ("--resume", "--overwrite"):
                cmd = [sys.executable, "-m", "ferlib", "train", "--data", str(synthetic_cache), "--out", str(out),
                       "--epochs", "2", flag, *TINY_CLI]
                answers.append(subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                                              env={**os.environ, "OMP_NUM_THREADS": "1"}))

    result = fer_train.train(synthetic_cache, out, num_epochs=2, callback=second_process, **TINY)
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    for done in answers:
        assert done.returncode == 2, done.stdout + done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and str(out) in last and f"pid {os.getpid()}" in last, done.stderr
        assert "Traceback" not in done.stderr
    # Released at the end: resuming the finished run now works (and trains nothing).
    again = fer_train.train(synthetic_cache, out, num_epochs=2, resume=True, **TINY)
    assert again["history"] == result["history"]


def test_the_lock_is_released_when_training_fails(synthetic_cache, tmp_path):
    out = tmp_path / "run"

    def fail(record):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        fer_train.train(synthetic_cache, out, num_epochs=2, callback=fail, **TINY)
    with fer_train.hold_run_lock(out):  # would raise FERError if still held
        pass
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys\n"
        "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.truncate(0)\n"
        "f.write(str(os.getpid())); f.flush(); print('locked', flush=True); sys.stdin.read()\n"),
        str(out / "train.lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        message = rf"{re.escape(str(out))} is in use by another training process \(pid {holder.pid}\)"
        with pytest.raises(FERError, match=message):
            fer_train.train(synthetic_cache, out, num_epochs=2, resume=True, **TINY)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


# --------------------------------------------------------------------------- 3. quiet overwrites


def test_synth_does_not_replace_files_it_did_not_write(tmp_path, capsys):
    real = tmp_path / "data"
    real.mkdir()
    (real / "fer2013.csv").write_text(FER_HEADER + "\nreal faces\n")
    (real / "fer2013new.csv").write_text(PLUS_HEADER + "\nreal votes\n")
    code, err = _cli(capsys, "synth", "--out", real, "--n", 20)
    _assert_one_line_error(code, err, real / "fer2013.csv", "not written by ferlib synth", "--overwrite")
    assert (real / "fer2013.csv").read_text() == FER_HEADER + "\nreal faces\n"
    assert (real / "fer2013new.csv").read_text() == PLUS_HEADER + "\nreal votes\n"
    # Its own files it replaces, with another seed too; a file edited since then it does not.
    own = tmp_path / "own"
    assert _cli(capsys, "synth", "--out", own, "--n", 20, "--seed", 1)[0] == 0
    first = (own / "fer2013.csv").read_bytes()
    assert _cli(capsys, "synth", "--out", own, "--n", 20, "--seed", 2)[0] == 0
    assert (own / "fer2013.csv").read_bytes() != first
    (own / "fer2013new.csv").write_text(PLUS_HEADER + "\nedited by hand\n")
    code, err = _cli(capsys, "synth", "--out", own, "--n", 20)
    _assert_one_line_error(code, err, own / "fer2013new.csv")
    # --overwrite replaces anything.
    assert _cli(capsys, "synth", "--out", real, "--n", 20, "--overwrite")[0] == 0
    assert len(fer_data.read_fer2013(real / "fer2013.csv")[0]) == 20


@pytest.fixture(scope="module")
def one_epoch_run(synthetic_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    fer_train.train(synthetic_cache, out, num_epochs=1, **TINY)
    return out


@pytest.mark.parametrize("name", ["config.json", "history.json", "best.json", "best.params", "labels.json",
                                  "checkpoint.json", "model-symbol.json", "history.csv"])
def test_evaluate_json_may_not_replace_a_file_of_the_run(one_epoch_run, synthetic_cache, tmp_path, capsys, name):
    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    before = (run / name).read_bytes()
    code, err = _cli(capsys, "evaluate", "--run", run, "--data", synthetic_cache, "--json", run / name)
    _assert_one_line_error(code, err, name, "a file of the training run")
    assert (run / name).read_bytes() == before


def test_evaluate_json_may_not_be_a_folder(one_epoch_run, synthetic_cache, tmp_path, capsys):
    code, err = _cli(capsys, "evaluate", "--run", one_epoch_run, "--data", synthetic_cache, "--json", tmp_path)
    _assert_one_line_error(code, err, tmp_path, "is a folder")
    assert not tmp_path.with_suffix(".npz").exists()  # nothing written beside it either


def test_overwrite_removes_the_evaluations_of_the_previous_run(synthetic_cache, tmp_path, capsys):
    out = tmp_path / "run"
    fer_train.train(synthetic_cache, out, num_epochs=1, **TINY)
    assert _cli(capsys, "evaluate", "--run", out, "--data", synthetic_cache)[0] == 0
    assert _cli(capsys, "evaluate", "--run", out, "--data", synthetic_cache, "--split", "val",
                "--json", out / "mine.json")[0] == 0
    evaluations = {"eval-test.json", "eval-test.npz", "mine.json", "mine.npz"}
    assert evaluations <= {p.name for p in out.iterdir()}
    (out / "notes.txt").write_text("kept: not written by ferlib")
    fer_train.train(synthetic_cache, out, num_epochs=1, overwrite=True, **TINY)
    names = {p.name for p in out.iterdir()}
    assert not names & evaluations and "notes.txt" in names


# --------------------------------------------------------------------------- 4. vote counts


def _write_pair(folder, vote_line, rows=3, bom=False):
    usages = ["Training"] * (rows - 2) + ["PublicTest", "PrivateTest"]
    pixels = " ".join(["7"] * 2304)
    fer_lines = [f"{i % 7},{pixels},{u}" for i, u in enumerate(usages)]
    plus_lines = [f"{u},fer{i:07d}.png,10,0,0,0,0,0,0,0,0,0" for i, u in enumerate(usages)]
    if vote_line is not None:
        plus_lines[-1] = vote_line
    fer, plus = folder / "fer2013.csv", folder / "fer2013new.csv"
    prefix = "\ufeff" if bom else ""
    fer.write_text(prefix + "\n".join([FER_HEADER] + fer_lines) + "\n", encoding="utf-8")
    plus.write_text(prefix + "\n".join([PLUS_HEADER] + plus_lines) + "\n", encoding="utf-8")
    return fer, plus


@pytest.mark.parametrize("votes, message", [
    ("4,40000,0,0,0,0,0,0,0,0", r"row 3 \(line 4\): vote happiness=40000 is larger than 1000"),
    ("4,0,0,0,0,0,0,0,0,12345678901234567890", r"row 3 \(line 4\): vote NF=12345678901234567890 is larger"),
    ("4,0,0,-3,0,0,0,0,0,0", r"row 3 \(line 4\): has a negative vote sadness=-3"),
])
def test_vote_counts_must_be_small_non_negative_integers(tmp_path, capsys, votes, message):
    fer, plus = _write_pair(tmp_path, f"PrivateTest,fer0000002.png,{votes}")
    with pytest.raises(DataFormatError, match=r"fer2013new\.csv, " + message):
        fer_data.read_ferplus(plus)
    code, err = _cli(capsys, "prepare", "--fer", fer, "--ferplus", plus, "--out", tmp_path / "cache")
    _assert_one_line_error(code, err, "fer2013new.csv, row 3 (line 4)")
    assert not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------- 5. clear errors


def _output_cases(blocker, run, cache):
    fer, plus = blocker.parent / "fer2013.csv", blocker.parent / "fer2013new.csv"
    cases = {
        "synth": ["synth", "--out", blocker / "x", "--n", 10],
        "prepare": ["prepare", "--fer", fer, "--ferplus", plus, "--out", blocker / "x"],
        "train": ["train", "--data", cache, "--out", blocker / "x", "--epochs", 1, *TINY_CLI],
        "evaluate": ["evaluate", "--run", run, "--data", cache, "--json", blocker / "x" / "e.json"],
        "package": ["package", "--run", run, "--out", blocker / "x" / "fer.mar"],
    }
    try:
        import onnx  # noqa: F401  (export needs it before it writes anything)
        cases["export"] = ["export", "--run", run, "--onnx", blocker / "x" / "fer.onnx"]
    except ImportError:
        pass
    return cases


@pytest.mark.parametrize("verb", ["synth", "prepare", "train", "evaluate", "package", "export"])
def test_an_output_path_under_a_file_is_one_line_error(one_epoch_run, synthetic_cache, tmp_path, capsys, verb):
    _write_pair(tmp_path, None)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cases = _output_cases(blocker, one_epoch_run, synthetic_cache)
    if verb not in cases:
        pytest.skip("onnx is not installed")
    code, err = _cli(capsys, *cases[verb])
    _assert_one_line_error(code, err, blocker)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("verb", ["synth", "prepare", "evaluate"])
def test_a_read_only_output_folder_is_one_line_error(one_epoch_run, synthetic_cache, tmp_path, capsys, verb):
    _write_pair(tmp_path, None)
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        argv = {"synth": ["synth", "--out", locked, "--n", 10],
                "prepare": ["prepare", "--fer", tmp_path / "fer2013.csv", "--ferplus", tmp_path / "fer2013new.csv",
                            "--out", locked],
                "evaluate": ["evaluate", "--run", one_epoch_run, "--data", synthetic_cache,
                             "--json", locked / "e.json"]}[verb]
        code, err = _cli(capsys, *argv)
        _assert_one_line_error(code, err, locked, "permission denied")
    finally:
        locked.chmod(0o755)


def test_a_folder_that_refuses_writes_is_one_line_error(tmp_path, capsys, monkeypatch):
    """What a read-only folder does to a non-root user, also testable as root."""
    def refuse(dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", dir)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    code, err = _cli(capsys, "synth", "--out", tmp_path / "read-only", "--n", 10)
    _assert_one_line_error(code, err, tmp_path / "read-only" / "fer2013.csv", "permission denied")


def test_a_byte_order_mark_is_accepted(tmp_path):
    fer, plus = _write_pair(tmp_path, None, rows=4, bom=True)
    images, usage = fer_data.read_fer2013(fer)
    assert images.shape == (4, 48, 48) and usage[0] == "Training"
    usage, names, votes = fer_data.read_ferplus(plus)
    assert usage[0] == "Training" and votes[0, 0] == 10
    assert len(fer_data.prepare(fer, plus, tmp_path / "cache", progress=False)) == 4


def test_an_over_long_field_names_its_row_and_line(tmp_path):
    fer, plus = _write_pair(tmp_path, None, rows=4)
    lines = fer.read_text().splitlines()
    lines[2] = "0," + "1 " * 100000 + "1,Training"  # 200,000 characters: over the csv module's limit
    fer.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"fer2013\.csv, row 2 \(line 3\): .*field larger than field limit"):
        fer_data.read_fer2013(fer)


def test_a_truncated_best_params_is_one_clear_sentence(one_epoch_run, synthetic_cache, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    data = (run / "best.params").read_bytes()
    (run / "best.params").write_bytes(data[:len(data) // 3])
    code, err = _cli(capsys, "evaluate", "--run", run, "--data", synthetic_cache)
    _assert_one_line_error(code, err, run / "best.params", "damaged or truncated")
    with pytest.raises(FERError, match="best.params is damaged or truncated"):
        fer_eval.evaluate_run(run, synthetic_cache, save=False)
