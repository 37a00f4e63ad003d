"""README's "What a run promises", over every run kind, on the one engine
(`keras_conmim.runs.Run`): a run stopped after a checkpoint resumes there
with the same command; other settings are refused naming them; a folder in
use is refused naming its holder; --no-resume moves the run aside, nothing
deleted; config.json records each start and resume. In-process, tiny
settings; the engine does not depend on the backend, so torch only (it
starts fastest on CPU). The exact-resume equality of the weights is tested
per kind beside each recipe (test_long_runs, test_finetune, test_downstream)."""

import json
import os

import keras
import pytest

from conftest import tiny_vit

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch",
                                reason="the run engine is backend-independent: run on torch")
BACKEND = keras.backend.backend()
DOWNSTREAM = ["--train-canvases", "8", "--val-canvases", "4", "--test-canvases", "4",
              "--steps", "4", "--batch-size", "4", "--canvas-size", "32",
              "--checkpoint-every", "2", "--grid", "0", "--init", "random"]


class _Killed(Exception):
    pass


def _kinds(encoder):
    """{kind: (recipe module name, argv without --output)}."""
    return {
        "pretrain": ("pretrain", ["--image-size", "16", "--patch-size", "4", "--batch-size",
                                  "4", "--steps-per-epoch", "2", "--epochs", "2",
                                  "--view-grid-every", "100"]),
        "finetune": ("finetune", ["--encoder", encoder, "--epochs", "2", "--steps-per-epoch",
                                  "2", "--batch-size", "8", "--min-steps", "0", "--head-init",
                                  "small", "--randaugment-ops", "0"]),
        "segment": ("segment", ["--encoder", encoder, *DOWNSTREAM]),
        "detect": ("detect", ["--encoder", encoder, *DOWNSTREAM]),
        "instance": ("instance_segment", ["--encoder", encoder, *DOWNSTREAM]),
    }


@pytest.mark.parametrize("kind", ["pretrain", "finetune", "segment", "detect", "instance"])
def test_every_run_kind_keeps_the_run_promises(kind, tmp_path, monkeypatch, capsys):
    import importlib

    from keras_conmim.models import callbacks
    from keras_conmim.errors import ResumeError, RunInUseError
    from keras_conmim.runs import folder as run_folder

    if kind != "pretrain":
        pytest.importorskip("keras_hub")
    encoder = os.path.join(tmp_path, "vit.keras")
    tiny_vit(image_shape=(16 if kind != "finetune" else 28,) * 2 + (1,)).save(encoder)
    name, argv = _kinds(encoder)[kind]
    recipe = importlib.import_module(f"recipes.{name}")
    out = tmp_path / "run"

    def run(*extra):
        return recipe.main(["--backend", BACKEND, *argv, "--output", str(out), *extra])

    save = callbacks.Checkpointer.save

    def save_then_die(self):
        path = save(self)
        if path and callbacks.checkpoint_step(path) > 0:
            raise _Killed  # killed right after its first checkpoint of trained weights
        return path
    monkeypatch.setattr(callbacks.Checkpointer, "save", save_then_die)
    with pytest.raises(_Killed):
        run()
    monkeypatch.setattr(callbacks.Checkpointer, "save", save)
    assert callbacks.list_checkpoints(str(out / "checkpoints")), "no checkpoint before the kill"

    with pytest.raises(ResumeError, match="(?s)seed: the run has 0, this command 1.*--no-resume"):
        run("--seed", "1")  # other settings: refused, naming them
    with run_folder.hold(str(out)):  # a folder in use: refused, naming the holder
        with pytest.raises(RunInUseError, match=f"process {os.getpid()} on host"):
            run()
    capsys.readouterr()
    run()  # the same command resumes
    assert "resum" in capsys.readouterr().out
    history = json.loads((out / "config.json").read_text())["history"]
    assert [h["event"] for h in history] == ["start", "resume"] and history[1]["step"] > 0
    finished = sorted(os.listdir(out))

    run("--no-resume")  # over a finished run: moved aside whole, nothing deleted
    (aside,) = os.listdir(out / "previous_runs")
    kept = sorted(os.listdir(out / "previous_runs" / aside))
    assert kept == [n for n in finished if n not in ("previous_runs", run_folder.LOCK)], kept
    assert (out / "results.json").is_file() or kind == "pretrain" and (out / "conmim.keras").is_file()
