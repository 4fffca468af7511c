"""The run folder that ships inside ferlib ("pretrained"): sealed by checksums, accepted wherever a
run folder is, the default of ``predict``, and right about real photos and the real test split."""
import json
import re
import shutil

import numpy as np
import pytest

import ferlib
from ferlib import EMOTIONS, FERError, run
from ferlib.cli import main
from ferlib.photos import SAMPLE_PHOTOS, sample_photo
from ferlib.serving import predict_local

import mxnet as mx  # noqa: E402  (after ferlib)

from conftest import REPO, shared_file


@pytest.fixture(scope="module")
def answers():
    """The pretrained network's answers about the sample photos, by name."""
    names = list(SAMPLE_PHOTOS)
    return dict(zip(names, predict_local([sample_photo(name) for name in names], run.PRETRAINED)))


def test_the_pretrained_run_is_complete_small_and_sealed():
    folder = run.locate(run.PRETRAINED)
    assert folder == run.PRETRAINED_DIR and folder.is_dir()
    listed = {line.split()[1] for line in (folder / run.CHECKSUMS).read_text().splitlines() if line.strip()}
    assert {run.CONFIG, run.LABELS, run.HISTORY_JSON, run.EXPORT_SYMBOL, run.EXPORT_PARAMS, "eval-test.json"} <= listed
    assert listed == {p.name for p in folder.iterdir()} - {run.CHECKSUMS}  # nothing unlisted
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 10 * 2 ** 20
    config = run.read_config(run.PRETRAINED)
    assert config["model"] == "vgg13_half" and config["mode"] == "crossentropy"
    assert config["emotions"] == list(EMOTIONS)


def test_the_pretrained_run_was_trained_with_the_cpu_long_aa_recipe_as_it_is():
    """The README's command (--recipe cpu_long_aa) retrains the shipped network: recipe and weights never drift."""
    from ferlib.train import RECIPES

    config, recipe = run.read_config(run.PRETRAINED), RECIPES["cpu_long_aa"]
    for name in ("model", "input_size", "num_epochs", "batch_size", "lr", "optimizer", "schedule", "warmup_epochs",
                 "wd", "momentum", "ema_decay", "normalization"):
        assert config[name] == getattr(recipe, name), name
    assert config["augmentation"] == recipe.augmentation and config["seed"] == 2
    assert config["model_kwargs"] == {"input_size": 48, **recipe.model_kwargs}
    assert recipe.model_kwargs == {"antialiased_blocks": 2}
    # It ran with bfloat16 steps: the recipe's "auto" on a CPU with AVX-512 BF16.
    assert recipe.cpu_precision == "auto" and config["cpu_precision"] == "bfloat16"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "--recipe cpu_long_aa --mode crossentropy \\\n    --gpus cpu --seed $seed --out runs/cpu_long_aa-crossentropy-s$seed\n" in readme
    assert "run.ship_pretrained('runs/cpu_long_aa-crossentropy-s2'," in readme


def test_a_changed_or_missing_pretrained_file_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "pretrained"
    shutil.copytree(run.PRETRAINED_DIR, copy)
    monkeypatch.setattr(run, "PRETRAINED_DIR", copy)
    assert run.locate("pretrained") == copy
    params = copy / run.EXPORT_PARAMS
    data = bytearray(params.read_bytes())
    data[-1] ^= 1
    params.write_bytes(bytes(data))
    run._check_pretrained.cache_clear()
    with pytest.raises(FERError, match="model-0000.params does not match its checksum.*reinstall ferlib"):
        run.locate("pretrained")
    params.unlink()
    with pytest.raises(FERError, match="incomplete: .*model-0000.params is missing"):
        run.locate("pretrained")
    run._check_pretrained.cache_clear()


def test_get_model_pretrained_is_the_shipped_network():
    net = ferlib.model.get_model("vgg13_half", pretrained=True)
    exported = ferlib.model.load_exported(run.PRETRAINED)
    x = mx.nd.random.normal(shape=(3, 1, 48, 48))
    np.testing.assert_allclose(net(x).asnumpy(), exported(x).asnumpy(), rtol=1e-4, atol=1e-5)
    # float32 weights although it trained with bfloat16 steps: it runs on any CPU.
    assert {param.data().dtype for param in net.collect_params().values()} == {np.float32}
    # It carries how its faces must be prepared: the shipped run's normalisation.
    assert net.normalization == ferlib.transforms.normalization_of(run.read_config(run.PRETRAINED)) == "standard"
    with pytest.raises(FERError, match="vgg13 has no pretrained weights: ferlib ships FER\\+ weights for 'vgg13_half'"):
        ferlib.model.get_model("vgg13", pretrained=True)
    with pytest.raises(FERError, match="built as it was trained"):
        ferlib.model.get_model("vgg13_half", pretrained=True, width=1.0)


def test_the_astronaut_smiles_and_each_sample_photo_has_one_face(answers):
    for name, (status, answer) in answers.items():
        assert status == 200, (name, answer)
        assert len(answer["faces"]) == 1, (name, answer["faces"])
    [astronaut] = answers["astronaut"][1]["faces"]
    assert astronaut["emotion"] == "happiness"
    assert astronaut["probabilities"]["happiness"] > 0.5
    x, y, w, h = astronaut["box"]
    assert 150 <= x + w / 2 <= 250 and 50 <= y + h / 2 <= 170  # her face, in the 512x512 picture


def test_predict_without_url_or_run_answers_with_the_pretrained_network(tmp_path, capsys, answers):
    photo = tmp_path / "astronaut.png"
    photo.write_bytes(sample_photo("astronaut"))
    assert main(["predict", str(photo), "--json", "--draw", str(tmp_path / "drawn.png")]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    printed = json.loads(line)
    assert printed["faces"] == answers["astronaut"][1]["faces"]
    assert (tmp_path / "drawn.png").is_file()


def test_evaluate_and_package_accept_pretrained_and_never_write_into_it(synthetic_cache, tmp_path, monkeypatch):
    from ferlib.evaluate import evaluate_run
    from ferlib.serving import package_run, read_archive

    before = {p.name: p.stat().st_mtime_ns for p in run.PRETRAINED_DIR.iterdir()}
    monkeypatch.chdir(tmp_path)
    result = evaluate_run("pretrained", synthetic_cache, split="test")
    assert result["run"] == "pretrained" and result["model"] == "vgg13_half"
    assert (tmp_path / "pretrained-eval-test.json").is_file()
    mar = package_run("pretrained", tmp_path / "store" / "fer.mar")
    _, settings, files = read_archive(mar)
    assert settings["run"]["run_dir"] == "pretrained" and settings["input_size"] == 48
    assert {p.name: p.stat().st_mtime_ns for p in run.PRETRAINED_DIR.iterdir()} == before


@pytest.mark.realdata
def test_the_shipped_weights_reproduce_the_readme_figure(tmp_path):
    """The real test split, evaluated now, gives the shipped evaluation and the README's figure."""
    from ferlib.data import prepare
    from ferlib.evaluate import evaluate_run

    cache = tmp_path / "cache"
    prepare(shared_file("fer2013.csv.gz"), shared_file("fer2013new.csv"), cache, progress=False)
    result = evaluate_run("pretrained", cache, split="test", save=False)
    shipped = run.read_json(run.PRETRAINED_DIR / "eval-test.json")
    assert result["num_faces"] == shipped["num_faces"] == 3153
    assert result["accuracy"] == pytest.approx(shipped["accuracy"], abs=0.001)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("|") and "shipped as `pretrained`" in line)
    [test_accuracy] = re.findall(r"\*\*(\d\d\.\d\d)%\*\*", row)  # the bold column: test accuracy
    assert float(test_accuracy) / 100 == pytest.approx(result["accuracy"], abs=0.001), row


def test_the_readme_shows_the_shipped_run_as_ferlib_results_prints_it():
    """The results table's row of the shipped run has the figures that ``python -m ferlib results pretrained``
    prints: epochs, validation, test plain and with TTA, top-2, KL and ECE (its time is the wall clock there)."""
    from ferlib.evaluate import format_results_table, run_results

    printed = format_results_table([run_results(run.PRETRAINED)]).splitlines()[2].strip("| ").split(" | ")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    [row] = [line for line in readme.splitlines() if line.startswith("|") and "shipped as `pretrained`" in line]
    cells = row.strip("| ").split(" | ")
    assert cells[3] == printed[4] == "53 (41)" and cells[-6:] == printed[-6:], (cells, printed)
