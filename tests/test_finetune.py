import json
import os
import re
import sys

import keras
import numpy as np
import pytest

from keras_conmim.downstream.classifier import ViTClassifier, finetune_encoder
from conftest import randomize_weights, run_recipe, tiny_vit, to_numpy


def _pattern_images(n, seed=0):
    """Separable synthetic data: horizontal stripes, vertical stripes,
    checkerboard or flat, plus noise. (Position-free on purpose: with a
    zero-initialised relative bias and mean pooling, a fresh ViT cannot yet
    tell where in the image something is.)"""
    rng = np.random.RandomState(seed)
    y = np.arange(n) % 4
    r, c = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    patterns = [(r // 2) % 2, (c // 2) % 2, ((r // 2) + (c // 2)) % 2, np.zeros((16, 16))]
    x = np.stack([patterns[k] * 150 for k in y])[..., None] + rng.randint(0, 80, (n, 16, 16, 1))
    return x.astype("uint8"), y


# make_batches' geometry switched off: the images as the source holds them.
NO_GEOMETRY = dict(crop="none", crop_padding=4, crop_scale_min=0.08, flip=0.0)


@pytest.fixture(params=[True, False], ids=["tf.data", "no-tensorflow"])
def tensorflow(request, monkeypatch):
    """make_batches' two paths: True for tf.data, False for the PyDataset a box
    without TensorFlow gets (`import tensorflow` made to fail)."""
    if request.param:
        pytest.importorskip("tensorflow")
    elif keras.backend.backend() == "tensorflow":
        pytest.skip("the TensorFlow backend cannot run without TensorFlow")
    else:
        monkeypatch.setitem(sys.modules, "tensorflow", None)
    return request.param


def test_finetune_layout_keeps_the_function():
    vit = tiny_vit()
    randomize_weights(vit)
    tuned = finetune_encoder(vit, drop_path_rate=0.2)
    assert not tuned.use_shared_relative_position_bias and tuned.drop_path_rate == 0.2
    x = np.random.RandomState(0).standard_normal((2, 16, 16, 1)).astype("float32")
    np.testing.assert_allclose(to_numpy(tuned(x)), to_numpy(vit(x)), atol=1e-5)
    tables = [to_numpy(b.relative_position_bias.relative_position_bias_table) for b in tuned.blocks]
    np.testing.assert_array_equal(tables[0], tables[1])


def test_classifier_learns_separable_data(tmp_path):
    x, y = _pattern_images(128)
    model = ViTClassifier(finetune_encoder(tiny_vit(), 0.0), num_classes=4)
    head = to_numpy(model.head.kernel)
    assert head.std() < 1e-3  # initialised small
    model.compile(optimizer=keras.optimizers.AdamW(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=8, verbose=0)
    xt, yt = _pattern_images(64, seed=1)
    accuracy = np.mean(np.argmax(to_numpy(model.predict(xt, verbose=0)), 1) == yt)
    assert accuracy > 0.5, accuracy  # chance is 0.25
    path = os.path.join(tmp_path, "classifier.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(to_numpy(loaded.predict(xt, verbose=0)),
                               to_numpy(model.predict(xt, verbose=0)), atol=1e-6)


def test_finetune_recipe_runs(tmp_path):
    encoder = tiny_vit(image_shape=(28, 28, 1))
    path = os.path.join(tmp_path, "enc.keras")
    encoder.save(path)
    out = os.path.join(tmp_path, "cls")
    result = run_recipe(
        "finetune", "--encoder", path, "--epochs", "1", "--steps-per-epoch", "3",
        "--min-steps", "0", "--randaugment-factor", "0.5",  # keeps RandAugment on: tested
        "--batch-size", "16", "--probe-weight-decay", "1e-4",  # cv: test_finetune_budget
        "--pooling", "mean",  # the pooled head gets LP-FT (the flatten head starts small)
        "--output", out, "--results-json", os.path.join(tmp_path, "result.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("done: test top-1")
    with open(os.path.join(tmp_path, "result.json")) as f:  # what scripts read, not the log
        written = json.load(f)
    assert f"test top-1 {written['top1']:.2f}%" in last and written["test_images"] == 1000
    assert written["recipe"]["pooling"] == "mean" and written["recipe_sources"]["pooling"] == "flag"
    assert written["recipe_sources"]["lr"] == "preset" and written["resumed_after_epoch"] == 0
    assert written["head"].startswith("linear probe on the frozen features")
    assert "head: linear probe on the frozen features" in result.stdout  # LP-FT by default
    assert re.search(r'pooling +"mean"   <- flag\n', result.stdout), result.stdout
    assert "weight decay 0.0001 <- flag" in result.stdout
    assert re.search(r"randaugment_ops +2\n", result.stdout), result.stdout  # on: not scaled off
    assert os.path.isfile(os.path.join(out, "classifier.keras"))
    with open(os.path.join(out, "results.json")) as f:  # the run folder's own copy
        assert json.load(f) == written
    assert sorted(os.listdir(out)) == ["classifier.keras", "config.json", "log.csv",
                                       "results.json"]
    if keras.backend.backend() != "torch":
        return  # flag checks: the backend does not matter
    missing = run_recipe("finetune", "--encoder", "nope.keras")
    assert missing.returncode == 2 and "pretrain.py" in missing.stderr
    bad = run_recipe("finetune", "--probe-weight-decay", "-1")
    assert bad.returncode == 2 and "cv or a number >= 0" in bad.stderr


@pytest.mark.skipif(keras.backend.backend() != "torch",
                    reason="a backend-free branch of the recipe (how the encoder is built); the "
                    "recipe itself runs on every backend above. Run once, on torch (CI time)")
def test_finetune_recipe_from_scratch_with_a_preset(tmp_path, capsys):
    # The --from-scratch
    # branch that bench/fashion_mnist.py's scratch rows use.
    from recipes import finetune

    out = os.path.join(tmp_path, "scratch")
    finetune.main(["--backend", keras.backend.backend(), "--from-scratch", "--preset",
                   "vit_mini_p4_28", "--encoder", "missing.keras", "--epochs", "1",
                   "--steps-per-epoch", "1", "--min-steps", "0", "--batch-size", "8",
                   "--output", out])
    assert "fine-tuning from random init" in capsys.readouterr().out
    model = keras.saving.load_model(os.path.join(out, "classifier.keras"))
    assert tuple(model(np.zeros((2, 28, 28, 1), "float32")).shape) == (2, 10)


class _Killed(Exception):
    pass


def test_finetune_resumes_where_a_killed_run_stopped(tmp_path, monkeypatch, capsys):
    # A run killed right after its epoch-2 checkpoint, run again, ends with
    # the weights of the run that was never stopped (augmentation off: the
    # random draws are the one thing a resumed run does not repeat). The run
    # folder keeps the engine's promises: --no-resume moves the run aside
    # (nothing deleted), a folder in use is refused naming its holder.
    from keras_conmim.models import callbacks
    from keras_conmim.errors import ResumeError, RunInUseError
    from keras_conmim.runs import folder as run_folder
    from recipes import finetune

    encoder = tiny_vit(image_shape=(28, 28, 1))
    path = os.path.join(tmp_path, "enc.keras")
    encoder.save(path)

    def run(name, *extra):
        out = os.path.join(tmp_path, name)
        finetune.main(["--backend", keras.backend.backend(), "--encoder", path, "--epochs", "3",
                       "--steps-per-epoch", "2", "--batch-size", "8", "--min-steps", "0",
                       "--warmup-epochs", "1", "--head-init", "small", "--drop-path", "0",
                       "--mixup", "0", "--cutmix", "0", "--randaugment-ops", "0",
                       "--output", out, *extra])
        return os.path.join(out, "classifier.keras")

    whole = keras.saving.load_model(run("whole"))
    assert not os.path.exists(os.path.join(tmp_path, "whole", "checkpoints"))  # whole in the file

    save = callbacks.Checkpointer.on_epoch_end

    def save_then_die(self, epoch, logs=None):
        save(self, epoch, logs)
        if epoch == 1:
            raise _Killed
    monkeypatch.setattr(callbacks.Checkpointer, "on_epoch_end", save_then_die)
    with pytest.raises(_Killed):
        run("resumed")
    monkeypatch.setattr(callbacks.Checkpointer, "on_epoch_end", save)
    folder = os.path.join(tmp_path, "resumed", "checkpoints")
    assert [os.path.basename(p) for p in callbacks.list_checkpoints(folder)] == [
        "ckpt-00000002.keras", "ckpt-00000004.keras"]
    assert not os.path.exists(os.path.join(tmp_path, "resumed", "classifier.keras"))

    with pytest.raises(ResumeError, match="(?s)holds a stopped run with other settings.*lr.*"
                       "--no-resume"):
        run("resumed", "--lr", "0.5")
    with run_folder.hold(os.path.join(tmp_path, "resumed")):
        with pytest.raises(RunInUseError, match=f"in use by another run: process {os.getpid()} on host"):
            run("resumed")
    capsys.readouterr()
    resumed = keras.saving.load_model(run("resumed"))
    assert "ckpt-00000004.keras at step 4" in capsys.readouterr().out
    for a, b in zip(whole.weights, resumed.weights):
        np.testing.assert_allclose(to_numpy(b), to_numpy(a), atol=1e-5, err_msg=a.path)
    assert int(to_numpy(resumed.optimizer.iterations)) == 6
    history = json.load(open(os.path.join(tmp_path, "resumed", "config.json")))["history"]
    assert [(h["event"], h["step"]) for h in history] == [("start", 0), ("resume", 4)]

    # --no-resume over a stopped run and over a finished one: both kept
    with pytest.raises(_Killed):
        monkeypatch.setattr(callbacks.Checkpointer, "on_epoch_end", save_then_die)
        run("twice")
    monkeypatch.setattr(callbacks.Checkpointer, "on_epoch_end", save)
    run("twice", "--no-resume")
    run("twice", "--no-resume")
    previous = os.path.join(tmp_path, "twice", "previous_runs")
    kept = [sorted(os.listdir(os.path.join(previous, d))) for d in sorted(os.listdir(previous))]
    assert kept == [["checkpoints", "config.json", "log.csv"],
                    ["classifier.keras", "config.json", "log.csv", "results.json"]], kept
    assert len(os.listdir(os.path.join(previous, sorted(os.listdir(previous))[0],
                                       "checkpoints"))) == 2


def test_finetune_batches_without_tensorflow_follow_the_global_step(monkeypatch):
    # The PyDataset path (a JAX or torch box without TensorFlow): batch i is
    # global step first_step + i (an endless stream), as in the tf.data path.
    import sys as _sys

    from keras_conmim.data import load_default
    from recipes import finetune

    monkeypatch.setitem(_sys.modules, "tensorflow", None)  # `import tensorflow` fails
    source = load_default("train", image_size=(28, 28), channels="gray")
    recipe = finetune.FinetuneRecipe(batch_size=4, **NO_GEOMETRY)
    batches = finetune.make_batches(source, 10, recipe, seed=3, first_step=6, steps_per_epoch=3)
    assert isinstance(batches, keras.utils.PyDataset) and len(batches) == 3
    assert batches.num_batches is None  # endless: fit's steps_per_epoch cuts the epochs
    seen = [to_numpy(batches[0][1]), to_numpy(batches[5][1])]
    for labels, step in zip(seen, (6, 11)):
        expected = source.labels[source.batch_indices(4, 3, step)]
        np.testing.assert_array_equal(np.argmax(labels, 1), expected)


def test_random_erasing_fills_one_rectangle_per_image(tensorflow):
    # The release's random erasing: with probability p, a rectangle of 2-33%
    # of the image becomes mid-grey; nothing else changes. p = 0: untouched.
    from keras_conmim.data import load_default
    from recipes import finetune

    source = load_default("train", image_size=(28, 28), channels="gray")
    originals = source.batch(source.batch_indices(16, 0, 0)).astype("float32")

    def first_batch(p):
        recipe = finetune.FinetuneRecipe(batch_size=16, random_erasing=p, **NO_GEOMETRY)
        batches = finetune.make_batches(source, 10, recipe, seed=0, steps_per_epoch=1)
        x, _ = batches[0] if not tensorflow else next(iter(batches))
        return to_numpy(x)

    np.testing.assert_array_equal(first_batch(0.0), originals)
    erased = first_batch(1.0)
    changed = erased != originals
    assert np.all(erased[changed] == 127.5)  # only the fill value is written
    for image in changed[..., 0]:
        rows, cols = np.nonzero(image)
        assert rows.size, "p = 1 erases every image"
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        # one rectangle (pixels that were already mid-grey aside: none in uint8 data)
        assert rows.size == box and 0.01 * 784 <= box <= 0.4 * 784, box


def _stopped_run(folder, settings):
    """A run folder holding a checkpoint and the run file `settings`."""
    from keras_conmim.runs import folder as run_folder

    os.makedirs(os.path.join(folder, "checkpoints"))
    open(os.path.join(folder, "checkpoints", "ckpt-00000002.keras"), "w").close()
    with open(os.path.join(folder, run_folder.CONFIG), "w") as f:
        f.write(run_folder.record(settings, {}, None, "start", 0, extra={"head": "h"}))


def _resumes(folder, settings):
    """The run file the engine resumes with these settings (ResumeError if not)."""
    from keras_conmim.runs.finetuning import older_run_problems
    from keras_conmim.runs import Run

    with Run(folder, settings, problems=older_run_problems, log=lambda s: None) as run:
        assert run.resuming
        return run.saved


def test_a_run_file_from_before_random_erasing_resumes_with_it_off(tmp_path):
    from keras_conmim.errors import ResumeError
    from recipes import finetune

    folder = os.path.join(tmp_path, "run")
    encoder = os.path.join(tmp_path, "enc.keras")
    open(encoder, "w").close()
    argv = ["--encoder", encoder, "--output", folder]
    args = finetune.parse_args(argv)
    settings = finetune.run_settings(args, finetune.recipe_of(args, "vit_mini_p4_28", 1000)[0])
    assert settings["random_erasing"] == 0.0
    _stopped_run(folder, {k: v for k, v in settings.items() if k != "random_erasing"})
    assert _resumes(folder, settings)["head"] == "h"
    args = finetune.parse_args([*argv, "--random-erasing", "0.25"])
    settings = finetune.run_settings(args, finetune.recipe_of(args, "vit_mini_p4_28", 1000)[0])
    with pytest.raises(ResumeError, match="random_erasing: the run has 0.0, this command 0.25"):
        _resumes(folder, settings)


def test_batches_are_the_release_geometry_of_the_step_images(tensorflow):
    # Batch k is train_geometry of step k's images with a generator seeded by
    # (seed, step) alone: the tf.data and the no-TensorFlow paths give the same
    # pixels, and a resumed run crops as the stopped one would have.
    from keras_conmim.data import geometry, load_default
    from keras_conmim.runs.finetuning import GEOMETRY_STREAM
    from recipes import finetune

    source = load_default("train", image_size=(28, 28), channels="gray")
    recipe = finetune.FinetuneRecipe(batch_size=16, crop="auto", crop_padding=4,
                                     crop_scale_min=0.08, flip=0.5)
    batches = finetune.make_batches(source, 10, recipe, seed=2, first_step=5, steps_per_epoch=3)
    x, y = batches[1] if not tensorflow else list(batches.take(2))[1]
    idx = source.batch_indices(16, 2, 6)
    expected = geometry.train_geometry(
        source.batch(idx), np.random.default_rng((2, GEOMETRY_STREAM, 6)), "pad", 4)
    np.testing.assert_array_equal(to_numpy(x), expected.astype("float32"))
    np.testing.assert_array_equal(np.argmax(to_numpy(y), 1), source.labels[idx])
    assert not np.array_equal(expected, source.batch(idx))


def test_finetune_geometry_flags_recipe_and_old_run_files(tmp_path):
    from recipes import finetune

    encoder = os.path.join(tmp_path, "enc.keras")
    open(encoder, "w").close()
    argv = ["--encoder", encoder]
    from keras_conmim.errors import ConfigError, ResumeError
    from keras_conmim.runs.finetuning import ADDED_SINCE

    args = finetune.parse_args(argv)
    recipe, _, text = finetune.recipe_of(args, "vit_mini_p4_28")  # the recipe as written
    assert (recipe.crop, recipe.crop_padding, recipe.flip) == ("auto", 4, 0.5)  # the release's
    assert 'crop                 "auto"' in text
    recipe, _, _ = finetune.recipe_of(finetune.parse_args(argv), "vit_mini_p4_28", 1000)
    assert (recipe.crop, recipe.crop_padding, recipe.flip) == ("none", 0, 0.0)  # 300 steps: none
    args = finetune.parse_args([*argv, "--crop", "none", "--flip", "0"])
    recipe, _, _ = finetune.recipe_of(args, "vit_base_p16_224")
    assert (recipe.crop, recipe.flip, recipe.crop_scale_min) == ("none", 0.0, 0.08)
    for bad, message in ((["--flip", "2"], "flip 2.0: a probability"),
                         (["--crop-padding", "-4"], "crop padding -4"),
                         (["--crop-scale-min", "0"], "crop scale min 0.0")):
        with pytest.raises(SystemExit):
            finetune.parse_args([*argv, *bad])
        with pytest.raises(ConfigError, match=message):  # the recipe's own check
            finetune.FinetuneRecipe(**{**finetune.FinetuneRecipe().as_dict(),
                                       bad[0][2:].replace("-", "_"): float(bad[1])})
    # A run file written before the geometry existed was made without it: it
    # resumes where the geometry is off (as a short run scales it), and says
    # so otherwise.
    folder = os.path.join(tmp_path, "run")
    args = finetune.parse_args([*argv, "--output", folder, "--pooling", "mean"])
    settings = finetune.run_settings(args, finetune.recipe_of(args, "vit_mini_p4_28", 1000)[0])
    _stopped_run(folder, {k: v for k, v in settings.items() if k not in ADDED_SINCE})
    assert _resumes(folder, settings)["head"] == "h"
    args = finetune.parse_args([*argv, "--output", folder])
    settings = finetune.run_settings(args, finetune.recipe_of(args, "vit_mini_p4_28")[0])
    with pytest.raises(ResumeError, match="(?s)crop: the run has 'none', this command 'auto'.*"
                       "flip: the run has 0.0, this command 0.5.*"
                       "pooling: the run has 'mean', this command 'flatten'"):
        _resumes(folder, settings)


def test_test_images_above_32_px_are_center_cropped_as_the_release_evaluates():
    from keras_conmim.data import load_default
    from recipes import finetune

    train, test = finetune.load_splits("default", (40, 40, 1), crop="auto")
    assert train.images.shape[1:] == test.images.shape[1:] == (40, 40, 1)
    loaded = load_default("test", image_size=(45, 45), channels="gray")  # 40 / 0.875
    np.testing.assert_array_equal(test.images, loaded.images[:, 2:42, 2:42])
    np.testing.assert_array_equal(test.labels, loaded.labels)
    _, small = finetune.load_splits("default", (28, 28, 1), crop="auto")  # 28 px: as it is
    np.testing.assert_array_equal(small.images, load_default("test").images)


def test_a_flatten_head_sees_where_each_patch_is(tmp_path):
    # Mean pooling of a ViT without absolute position embedding keeps what the
    # patches are, not where: two images whose patches are permuted pool alike.
    # The flatten head tells them apart, fits LP-FT, and round-trips.
    encoder = finetune_encoder(tiny_vit(), 0.0)
    randomize_weights(encoder, scale=0.05)
    image = np.random.RandomState(0).randint(0, 256, (1, 16, 16, 1)).astype("uint8")
    swapped = image.copy()
    swapped[:, :4, :4], swapped[:, -4:, -4:] = image[:, -4:, -4:], image[:, :4, :4]
    pair = np.concatenate([image, swapped])
    mean = ViTClassifier(encoder, num_classes=3).features(pair)
    flat = ViTClassifier(encoder, num_classes=3, pooling="flatten").features(pair)
    assert flat.shape == (2, encoder.num_patches * encoder.hidden_dim)
    assert np.abs(flat[0] - flat[1]).max() > 10 * np.abs(mean[0] - mean[1]).max()
    x, y = _pattern_images(64)
    model = ViTClassifier(encoder, num_classes=4, pooling="flatten")
    accuracy, _ = model.init_head_from_probe(x, y, weight_decay=1e-4)
    assert accuracy > 0.9, accuracy
    # "mean+flatten": the mean, then the layout
    both = ViTClassifier(encoder, num_classes=4, pooling="mean+flatten")
    assert both.features(pair).shape == (2, (encoder.num_patches + 1) * encoder.hidden_dim)
    for model in (model, both):
        path = os.path.join(tmp_path, "classifier.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert loaded.pooling == model.pooling
        np.testing.assert_allclose(to_numpy(loaded.predict(x[:8], verbose=0)),
                                   to_numpy(model.predict(x[:8], verbose=0)), atol=1e-5)
