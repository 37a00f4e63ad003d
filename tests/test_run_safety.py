"""What a run promises (README "What a run promises"): no checkpoint with a
NaN, resume only with the run's own settings, two runs never mixed in one
folder, bad configs refused before the model is built, and the model's input
contract. The recipe scenarios run the real recipe on tiny data, on JAX
only (the logic is the recipe's, not the backend's); the library parts run
on every backend."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_conmim as kc
from keras_conmim.models import callbacks as cb
from conftest import recipe_command, run_recipe, tiny_vit, to_numpy, uint8_images

BACKEND = keras.backend.backend()
TINY = ["--image-size", "16", "--patch-size", "4", "--batch-size", "4", "--steps-per-epoch", "2",
        "--view-grid-every", "100"]
recipe_backend_only = pytest.mark.skipif(
    BACKEND != "jax", reason="recipe scenario: the backend does not matter, run on JAX")


def _recipe(out, *args):
    """recipes/pretrain.py on tiny settings, with its command line's exit
    status and printed lines (in this interpreter)."""
    return run_recipe("pretrain", "--output", out, *TINY, *args)


def _model():
    model = kc.ConMIM(tiny_vit(), projector=kc.ProjectionHead(16, 8), seed=0)
    model.compile(optimizer="adamw")
    model.optimizer.build(model.trainable_variables)
    return model


def _poison(model):
    weight = model.projector.trainable_weights[0]
    weight.assign(np.full(weight.shape, np.nan, "float32"))


# ---- NaN: never written, never resumed, named honestly ------------------------

def test_checkpointer_never_writes_a_model_with_a_nan(tmp_path):
    model = _model()
    ckpt = cb.Checkpointer(str(tmp_path), keep=2)
    ckpt.set_model(model)
    good = ckpt.save()
    assert good and cb.list_checkpoints(str(tmp_path)) == [good]
    model.step_counter.assign(4)
    _poison(model)
    with pytest.warns(UserWarning, match=r"Not saving a checkpoint at step 4: 1 .*projection_head"):
        assert ckpt.save() is None
    assert cb.list_checkpoints(str(tmp_path)) == [good] and ckpt.last_path == good


def test_resume_skips_a_checkpoint_with_a_nan_and_says_so(tmp_path):
    from keras_conmim.atomic import save_atomic

    model = _model()
    ckpt = cb.Checkpointer(str(tmp_path))
    ckpt.set_model(model)
    good = ckpt.save()
    model.step_counter.assign(6)
    _poison(model)
    save_atomic(model, os.path.join(tmp_path, "ckpt-00000006.keras"))  # as older versions did
    with pytest.warns(UserWarning, match=r"Skipping checkpoint .*ckpt-00000006.*NaN or Inf"):
        restored, path = cb.load_latest_checkpoint(str(tmp_path))
    assert path == good and int(to_numpy(restored.step_counter)) == 0
    assert cb.nonfinite_variables(restored) == []


def test_resume_from_checkpoint_restores_weights_and_step_or_names_the_fix(tmp_path):
    # The one resume helper of pretrain.py, finetune.py and downstream.py.
    from keras_conmim.errors import ResumeError

    def head():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(optimizer="adam", loss="mse")
        return model

    with pytest.raises(ResumeError, match=r"no checkpoint in .* loads.*--no-resume \(the run is "
                                          r"moved to old/"):
        cb.resume_from_checkpoint(head(), str(tmp_path), moved_to="old")
    model = head()
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 2), "float32")
    model.fit(x, y, batch_size=2, epochs=1, verbose=0,
              callbacks=[cb.Checkpointer(str(tmp_path), keep=1)])
    again = head()  # not built: the sample builds it
    path, step = cb.resume_from_checkpoint(again, str(tmp_path), sample=x[:1])
    assert step == 2 and path == cb.list_checkpoints(str(tmp_path))[-1]
    for a, b in zip(model.weights, again.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_rotation_never_deletes_a_newer_numbered_checkpoint(tmp_path):
    model = _model()
    for step in (78, 79, 80):  # another run's, left in the folder
        open(os.path.join(tmp_path, f"ckpt-{step:08d}.keras"), "w").close()
    ckpt = cb.Checkpointer(str(tmp_path), keep=1)
    ckpt.set_model(model)
    for step in (1, 2):
        model.step_counter.assign(step)
        ckpt.save()
    names = sorted(os.listdir(tmp_path))
    assert names == [f"ckpt-{s:08d}.keras" for s in (2, 78, 79, 80)]


def test_fit_stops_at_a_nan_loss_unless_told_to_ignore_it():
    model = _model()
    _poison(model)
    with pytest.raises(cb.NonFiniteLossError, match="The loss became nan"):
        model.fit(uint8_images(8), batch_size=4, epochs=1, verbose=0)
    model = kc.ConMIM(tiny_vit(), projector=kc.ProjectionHead(16, 8), seed=0)
    model.compile(optimizer="adamw", nan_policy="ignore")
    _poison(model)
    history = model.fit(uint8_images(8), batch_size=4, epochs=1, verbose=0)
    assert np.isnan(history.history["loss"][-1])
    with pytest.raises(ValueError, match="nan_policy must be one of raise, ignore"):
        model.compile(optimizer="adamw", nan_policy="warn")


def test_images_per_second_is_always_logged():
    """log.csv keeps one set of columns: an epoch too short to time logs NaN."""
    scalars = cb.TrainingScalars(4)
    scalars.set_model(_model())
    logs = {}
    scalars.on_epoch_begin(0)
    scalars.on_train_batch_end(0)
    scalars.on_epoch_end(0, logs)
    assert set(logs) == {"learning_rate", "images_per_second"}
    assert np.isnan(logs["images_per_second"])


@recipe_backend_only
def test_recipe_nan_names_only_a_good_checkpoint(tmp_path):
    """--lr 1e3 breaks the weights: the run stops, no checkpoint with a NaN
    exists, and the one the message names (if any) loads finite."""
    out = tmp_path / "run"
    result = _recipe(out, "--lr", "1e3", "--epochs", "3", "--warmup-epochs", "0")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()
    assert any("The loss became nan" in line for line in message), result.stderr[-3000:]
    # the initial state (ckpt-00000000) is kept, so there is always a checkpoint to go on from
    assert "the run's initial state" in result.stderr or "--no-resume" in result.stderr
    for path in cb.list_checkpoints(str(out / "checkpoints")):
        assert cb.nonfinite_variables(keras.saving.load_model(path)) == [], path
    named = [w for line in message for w in line.split() if "ckpt-" in w]
    for path in named:
        assert os.path.isfile(path.rstrip(".")), named


# ---- resume with the run's own settings, runs never mixed --------------------

@recipe_backend_only
def test_resume_refuses_changed_settings_and_no_resume_moves_the_run_aside(tmp_path):
    out = tmp_path / "run"
    first = _recipe(out, "--epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    with open(out / "config.json") as f:
        ran = f.read()

    # changed settings: refused before the model is built, one line, nothing written
    refused = _recipe(out, "--epochs", "3", "--mask-unit", "1")
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr and "Epoch" not in refused.stdout
    assert "epochs: this run was sized for 1 epoch" in refused.stderr
    assert "mask_unit: the run has 2, this command 1" in refused.stderr
    assert "--no-resume" in refused.stderr and "another --output" in refused.stderr
    # the learning rate may go down (to climb out of a NaN), never up
    higher = _recipe(out, "--epochs", "1", "--lr", "0.5")
    assert higher.returncode == 2 and "lr: a resume may lower the learning rate" in higher.stderr
    with open(out / "config.json") as f:
        assert f.read() == ran

    # same settings, where files go changed: resumes, nothing left, history says so
    again = _recipe(out, "--epochs", "1", "--keep-checkpoints", "5")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "done: nothing left to train" in again.stdout
    assert "The loss became" not in again.stdout + again.stderr
    with open(out / "config.json") as f:
        config = json.load(f)
    assert config["keep_checkpoints"] == 5 and config["epochs"] == 1
    assert [h["event"] for h in config["history"]] == ["start", "resume"]
    assert config["history"][1]["changed"] == {"keep_checkpoints": [3, 5]}

    # --no-resume: the old run is moved aside whole, the new one is alone
    new = _recipe(out, "--epochs", "2", "--no-resume")
    assert new.returncode == 0, new.stderr[-3000:]
    previous = os.listdir(out / "previous_runs")
    assert len(previous) == 1 and f"moved them to {out / 'previous_runs' / previous[0]}" in new.stdout
    old = out / "previous_runs" / previous[0]
    assert sorted(os.listdir(old / "checkpoints")) == ["ckpt-00000000.keras", "ckpt-00000002.keras"]
    assert json.load(open(old / "config.json"))["epochs"] == 1
    assert sorted(os.listdir(out / "checkpoints")) == ["ckpt-00000000.keras", "ckpt-00000002.keras",
                                                       "ckpt-00000004.keras"]
    with open(out / "config.json") as f:
        config = json.load(f)
    assert config["epochs"] == 2 and [h["event"] for h in config["history"]] == ["start"]
    model = keras.saving.load_model(str(out / "conmim.keras"))
    assert int(to_numpy(model.step_counter)) == 4


# ---- configs and data refused before anything is written ----------------------

def _resolve(argv, capsys):
    from keras_conmim.errors import ConfigError
    from keras_conmim.runs.pretrain_config import resolve_config

    with pytest.raises(ConfigError) as error:
        resolve_config(argv)
    return str(error.value)


@pytest.mark.parametrize("text,message", [
    ('{"lr": [1, 2]}', "lr=[1, 2] (from the file): must be a number"),
    ('{"epochs": true}', "epochs=True (from the file): must be an integer"),
    ('{"batch_size": 4.5}', "batch_size=4.5 (from the file): must be an integer"),
    ('{"views": {"hue": "lots"}}', "views.hue='lots': must be a number in [0, 0.5]"),
    ('{"views": {"blur_sigma": [2, 1]}}', "views.blur_sigma=[2, 1]: must be two numbers"),
    ('{"mask_unit": 8, "image_size": 16}', "mask_unit=8: larger than the 4 x 4 patch grid"),
    ('{"symmetric_views": "yes"}', "symmetric_views='yes' (from the file): must be true or false"),
])
def test_bad_config_values_are_named(tmp_path, capsys, text, message):
    if BACKEND != "jax":
        pytest.skip("config parsing: the backend does not matter")
    path = tmp_path / "run.json"
    path.write_text(text)
    assert message in _resolve(["--config", str(path)], capsys)


def test_unambiguous_config_values_are_coerced(tmp_path):
    if BACKEND != "jax":
        pytest.skip("config parsing: the backend does not matter")
    from keras_conmim.runs.pretrain_config import resolve_config

    pytest.importorskip("yaml")
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\nbatch_size: 4.0\nmin_lr: '1e-6'\nsymmetric_views: 'true'\n")
    config, _, _ = resolve_config(["--config", str(path)])
    assert config["lr"] == 0.001 and config["min_lr"] == 1e-6
    assert config["batch_size"] == 4 and isinstance(config["batch_size"], int)
    assert config["symmetric_views"] is True


def test_non_finite_flags_are_refused(capsys):
    if BACKEND != "jax":
        pytest.skip("config parsing: the backend does not matter")
    assert "lr=inf (from the flag): must be a finite number" in _resolve(["--lr", "inf"], capsys)
    assert "clip_norm=nan" in _resolve(["--clip-norm", "nan"], capsys)


@recipe_backend_only
def test_data_errors_come_before_any_file_is_written(tmp_path):
    out = tmp_path / "run"
    too_big = _recipe(out, "--epochs", "1", "--batch-size", "5000")
    assert too_big.returncode == 2 and "Traceback" not in too_big.stderr
    assert "--batch-size 5000 is larger than the 4000 images" in too_big.stderr
    offline = _recipe(out, "--epochs", "1", "--data", "tfds:conmim_no_such_set")
    assert offline.returncode == 2 and "tfds has no dataset" in offline.stderr
    assert not out.exists()


# ---- the model's input contract -----------------------------------------------

def test_conmim_refuses_float_and_channels_first_images():
    model = kc.ConMIM(tiny_vit(), projector=kc.ProjectionHead(16, 8), seed=0)
    with pytest.raises(ValueError, match=r"uint8 images in \[0, 255\], received dtype float32.*"
                                         r"np.clip\(np.round\(x \* 255\)"):
        model.pretext_outputs(uint8_images(2).astype("float32") / 255.0)
    with pytest.raises(ValueError, match=r"\[B, H, W, C\] with C=1.*channels-first"):
        model.pretext_outputs(np.zeros((2, 1, 16, 16), "uint8"))
    with pytest.raises(ValueError, match="channel axis is missing"):
        model.pretext_outputs(np.zeros((2, 16, 16), "uint8"))
    model.compile(optimizer="adamw")
    with pytest.raises(ValueError, match="ConMIM takes uint8 images"):
        model.fit(uint8_images(8).astype("float32"), batch_size=4, epochs=1, verbose=0)


# ---- one run per folder ----------------------------------------------------------

def test_a_held_folder_refuses_a_second_run_and_a_dead_runs_lock_is_taken_over(tmp_path):
    import socket

    from keras_conmim.runs import folder as run_folder
    from keras_conmim.errors import RunInUseError

    folder = str(tmp_path / "run")
    with run_folder.hold(folder):
        with pytest.raises(RunInUseError, match=rf"in use by another run: process {os.getpid()} "
                           rf"on host {socket.gethostname()}"):
            with run_folder.hold(folder):
                pass
    assert not os.path.exists(os.path.join(folder, run_folder.LOCK))  # released
    # a lock whose process is gone (same host): taken over, with a warning
    os.makedirs(folder, exist_ok=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    lock = os.path.join(folder, run_folder.LOCK)
    with open(lock, "w") as f:
        json.dump({"pid": int(dead), "host": socket.gethostname(), "started": "then",
                   "command": "old"}, f)
    said = []
    with run_folder.hold(folder, warn=said.append):
        assert said and "held by a run that is gone" in said[0] and f"process {dead}" in said[0]
    # another host: alive while its heartbeat is fresh, dead once it is old
    with open(lock, "w") as f:
        json.dump({"pid": 1, "host": "elsewhere", "started": "then", "command": "x"}, f)
    with pytest.raises(RunInUseError, match="host elsewhere"):
        with run_folder.hold(folder):
            pass
    old = os.path.getmtime(lock) - run_folder.STALE_SECONDS - 1
    os.utime(lock, (old, old))
    with run_folder.hold(folder, warn=said.append):
        pass
    assert "host elsewhere" in said[-1]


@recipe_backend_only
def test_two_runs_into_one_folder_the_second_is_refused_the_first_finishes(tmp_path):
    import time

    from keras_conmim.runs import folder as run_folder

    out = tmp_path / "run"
    first = recipe_command("pretrain", "--output", out, *TINY, "--epochs", "2",
                           "--steps-per-epoch", "12", start=True)
    deadline = time.time() + 300
    while not (out / run_folder.LOCK).exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert (out / run_folder.LOCK).exists(), "the first run never took the folder"
    start = time.perf_counter()
    second = _recipe(out, "--epochs", "2", "--steps-per-epoch", "12")
    refused_in = time.perf_counter() - start
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-3000:]
    assert f"is in use by another run: process {first.pid}" in second.stderr
    assert refused_in < 60, refused_in  # refused at start, not after training
    with open(out / "config.json") as f:
        config = json.load(f)
    assert [h["event"] for h in config["history"]] == ["start"]  # the first run's record, alone
    assert not (out / run_folder.PREVIOUS).exists() and not (out / run_folder.LOCK).exists()
    assert json.load(open(out / "results.json"))["step"] == 24


# ---- a NaN you can climb out of -----------------------------------------------------

NAN_STEP = 5


@pytest.fixture
def nan_at_step(monkeypatch):
    """Makes the loss (and so every gradient) NaN at step NAN_STEP, inside the
    compiled step: the injected bad batch."""
    from keras import ops

    from keras_conmim.models.conmim import ConMIM

    original = ConMIM.pretext_loss

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        bad = ops.equal(ops.cast(self.step_counter, "int32"), NAN_STEP)
        out["loss"] = out["loss"] * ops.where(bad, float("nan"), 1.0)
        return out

    monkeypatch.setattr(ConMIM, "pretext_loss", poisoned)
    return monkeypatch


def _in_process(out, *args):
    from recipes import pretrain

    return pretrain.main(["--backend", BACKEND, "--output", str(out), *TINY, "--epochs", "4",
                          "--seed", "0", *args])  # checkpoints at the epoch ends: steps 2, 4, 6


def _finite(model):
    return all(np.isfinite(to_numpy(v)).all() for v in model.weights
               if "float" in str(v.dtype))


def test_a_nan_run_resumes_from_its_last_good_checkpoint_with_a_lower_lr(tmp_path, nan_at_step,
                                                                         capsys):
    out = tmp_path / "run"
    with pytest.raises(cb.NonFiniteLossError) as error:
        _in_process(out, "--lr", "1e-3")
    message = str(error.value)
    assert f"at step {NAN_STEP}" in message and "ckpt-00000004.keras" in message
    assert "--lr 0.0001" in message and "--on-nan rollback" in message  # the exact command
    nan_at_step.undo()  # the bad batch is behind us
    model = _in_process(out, "--lr", "1e-4")
    assert _finite(model) and int(to_numpy(model.step_counter)) == 8
    assert "lr: 0.001 -> 0.0001 from step 4" in capsys.readouterr().out
    with open(out / "config.json") as f:
        config = json.load(f)
    assert config["lr"] == 1e-4
    assert config["history"][-1]["event"] == "resume" and config["history"][-1]["step"] == 4
    assert config["history"][-1]["changed"] == {"lr": [1e-3, 1e-4]}
    # everything else stays refused, as before
    with pytest.raises(kc.errors.ResumeError, match="mask_unit: the run has 2, this command 1"):
        _in_process(out, "--lr", "1e-4", "--mask-unit", "1")


@recipe_backend_only
def test_a_run_that_stops_in_its_first_epoch_leaves_its_losses_in_log_csv(tmp_path, nan_at_step):
    """The NaN at step 5 falls inside the first epoch (6 steps): log.csv gets
    that epoch's row (its last finite batch, with the learning rate and
    throughput columns); the resumed run's rows line up under the same header."""
    import csv

    out = tmp_path / "run"
    with pytest.raises(cb.NonFiniteLossError):
        _in_process(out, "--steps-per-epoch", "6", "--epochs", "1")
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0"]
    assert np.isfinite(float(rows[0]["loss"])) and float(rows[0]["learning_rate"]) > 0
    assert {"images_per_second", "lookup_accuracy", "nan_rollbacks"} <= set(rows[0])
    nan_at_step.undo()
    _in_process(out, "--steps-per-epoch", "6", "--epochs", "1", "--lr", "1e-5")
    with open(out / "log.csv") as f:
        lines = f.read().strip().splitlines()
    assert len({len(line.split(",")) for line in lines}) == 1, lines  # one set of columns
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "0"]  # stopped, then resumed


def test_on_nan_rollback_finishes_a_run_with_an_injected_nan_batch(tmp_path, nan_at_step):
    out = tmp_path / "run"
    model = _in_process(out, "--on-nan", "rollback", "--lr", "1e-3")
    assert _finite(model) and int(to_numpy(model.step_counter)) == 8
    with open(out / "results.json") as f:
        results = json.load(f)
    (event,) = results["nan_rollbacks"]
    assert event["nan_step"] == NAN_STEP and event["checkpoint"] == "ckpt-00000004.keras"
    assert event["skipped_steps"] == [4, 6] and event["lr"] == pytest.approx(5e-4)
    with open(out / "config.json") as f:
        config = json.load(f)
    assert [h["event"] for h in config["history"]] == ["start", "rollback"]
    import csv

    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["nan_rollbacks"] for r in rows][-1] == "1"
    for path in cb.list_checkpoints(str(out / "checkpoints")):
        assert cb.nonfinite_variables(keras.saving.load_model(path)) == [], path
    # at most --max-rollbacks times (0: none; the policy is a count, any backend)
    with pytest.raises(cb.NonFiniteLossError, match="rolled back 0 time.*--max-rollbacks 0"):
        _in_process(tmp_path / "other", "--on-nan", "rollback", "--max-rollbacks", "0")


def test_the_nan_message_never_advises_what_the_command_already_does():
    """With --on-nan rollback given (and spent), the message offers the command
    with a lower lr, not 'add --on-nan rollback'; without it, both."""
    if BACKEND != "jax":
        pytest.skip("message text: the backend does not matter")
    from keras_conmim.runs import pretraining as pretrain

    error = cb.NonFiniteLossError("The loss became NaN at step 7.")
    base = {"lr": 1e-3, "max_rollbacks": 3, "output": "runs/x"}
    spent = pretrain.nan_error(error, {**base, "on_nan": "rollback"},
                               ["--on-nan", "rollback"], "runs/x", 3, "ckpt-00000004.keras")
    assert "rolled back 3 time(s)" in str(spent) and "--lr 0.0001" in str(spent)
    assert "add --on-nan rollback" not in str(spent)
    stopped = pretrain.nan_error(error, {**base, "on_nan": "stop"}, [], "runs/x", 0,
                                 "ckpt-00000004.keras")
    assert "add --on-nan rollback" in str(stopped)


def test_following_each_nan_message_ends_in_a_finished_run(tmp_path):
    """--lr 1e3 --warmup-epochs 0 ruins the weights: each NaN message names
    a checkpoint and a command; running the command printed (a few times at
    most) ends in a finished run with finite weights. A NaN that comes back
    before a new checkpoint steps back (its checkpoint moves to ruined/,
    nothing deleted); no message repeats a command that failed."""
    import shlex

    from recipes import pretrain

    out = tmp_path / "run"
    argv = ["--backend", BACKEND, "--output", str(out), *TINY, "--epochs", "3", "--seed", "0",
            "--lr", "1e3", "--warmup-epochs", "0"]
    tried = []
    for _ in range(4):
        try:
            model = pretrain.main(argv)
            break
        except cb.NonFiniteLossError as error:
            message = str(error)
            command = [line.strip() for line in message.splitlines()
                       if line.strip().startswith("python recipes/pretrain.py")]
            assert len(command) == 1, message
            named = [w for w in message.split() if "ckpt-" in w][-1]
            assert (named, command[0]) not in tried, message  # never the same way out twice
            tried.append((named, command[0]))
            argv = shlex.split(command[0])[2:]
    else:
        raise AssertionError(f"still NaN after following {len(tried)} messages: {tried}")
    assert _finite(model) and int(to_numpy(model.step_counter)) == 6
    assert 1 <= len(tried) <= 3, tried
    config = json.load(open(out / "config.json"))
    assert config["lr"] < 1e-2 and [h["event"] for h in config["history"]].count("nan") == len(tried)
    # every checkpoint the NaN came back from is kept, moved aside
    for path in cb.list_checkpoints(str(out / "checkpoints" / "ruined")):
        assert os.path.isfile(path)


def test_a_nan_that_comes_back_steps_back_to_the_checkpoint_before(tmp_path, nan_at_step):
    """The command a NaN message prints goes on from ckpt-4; the NaN comes
    back before a new checkpoint: the next message goes on from ckpt-2 (the
    one before) with a lower lr again, and ckpt-4 is kept in ruined/."""
    import shlex

    out = tmp_path / "run"
    with pytest.raises(cb.NonFiniteLossError) as first:
        _in_process(out, "--lr", "1e-3")
    assert re.search(r"Go on from \S*ckpt-00000004.keras", str(first.value))
    command = [w for w in str(first.value).splitlines() if "python recipes/pretrain.py" in w][0]
    from recipes import pretrain

    with pytest.raises(cb.NonFiniteLossError) as second:
        pretrain.main(shlex.split(command)[2:])
    assert re.search(r"Go on from \S*ckpt-00000002.keras", str(second.value)), str(second.value)
    assert "--lr 1e-05" in str(second.value)  # a tenth again, never the command that failed
    assert "ckpt-00000004.keras moved to ruined/" in str(second.value)
    assert os.listdir(out / "checkpoints" / "ruined") == ["ckpt-00000004.keras"]
    nan_at_step.undo()
    command = [w for w in str(second.value).splitlines() if "python recipes/pretrain.py" in w][0]
    model = pretrain.main(shlex.split(command)[2:])
    assert _finite(model) and int(to_numpy(model.step_counter)) == 8
    events = [h["event"] for h in json.load(open(out / "config.json"))["history"]]
    assert events == ["start", "nan", "resume", "nan", "resume"], events
