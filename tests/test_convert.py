import numpy as np
import pytest

from keras_conmim.integrations.convert import from_torch
from keras_conmim.models.layers import relative_position_index
from keras_conmim.models.views import normalize_images  # noqa: F401
from conftest import to_numpy
from numpy_reference import layer_norm, torch_layout_forward, torch_projector_eval

D, HEADS, LAYERS, P, C, GRID, MLP = 16, 2, 2, 4, 3, 4, 32


def release_state_dict(fine_tuned=False, seed=0):
    """Random weights under the release's names and shapes (spec, last section)."""
    rng = np.random.RandomState(seed)
    r = lambda *s: (rng.standard_normal(s) * 0.2).astype("float32")  # noqa: E731
    t = (2 * GRID - 1) ** 2 + 3
    sd = {"patch_embed.proj.weight": r(D, C, P, P), "patch_embed.proj.bias": r(D),
          "cls_token": r(1, 1, D)}
    for i in range(LAYERS):
        k = f"blocks.{i}."
        sd.update({k + "norm1.weight": 1 + r(D), k + "norm1.bias": r(D),
                   k + "attn.qkv.weight": r(3 * D, D), k + "attn.q_bias": r(D), k + "attn.v_bias": r(D),
                   k + "attn.proj.weight": r(D, D), k + "attn.proj.bias": r(D),
                   k + "gamma_1": r(D), k + "gamma_2": r(D),
                   k + "norm2.weight": 1 + r(D), k + "norm2.bias": r(D),
                   k + "mlp.fc1.weight": r(MLP, D), k + "mlp.fc1.bias": r(MLP),
                   k + "mlp.fc2.weight": r(D, MLP), k + "mlp.fc2.bias": r(D)})
        if fine_tuned:
            sd[k + "attn.relative_position_bias_table"] = r(t, HEADS)
            sd[k + "attn.relative_position_index"] = relative_position_index((GRID, GRID))
    if fine_tuned:
        sd.update({"fc_norm.weight": 1 + r(D), "fc_norm.bias": r(D), "head.weight": r(10, D),
                   "head.bias": r(10)})
        return sd
    sd.update({"mask_token": r(1, 1, D), "norm.weight": 1 + r(D), "norm.bias": r(D),
               "rel_pos_bias.relative_position_bias_table": r(t, HEADS),
               "rel_pos_bias.relative_position_index": relative_position_index((GRID, GRID)),
               "lm_head.weight": r(8, D)})
    for i, (n_in, n_out) in enumerate([(D, 24), (24, 24), (24, 12)]):
        sd[f"projectors.{3 * i}.weight"] = r(n_out, n_in)
        bn = f"projectors.{3 * i + 1}."
        sd[bn + "running_mean"] = r(n_out)
        sd[bn + "running_var"] = 1 + np.abs(r(n_out))
        sd[bn + "num_batches_tracked"] = np.array(7)
        if i < 2:
            sd[bn + "weight"], sd[bn + "bias"] = 1 + r(n_out), r(n_out)
    return sd


def _images():
    return np.random.RandomState(5).standard_normal((2, GRID * P, GRID * P, C)).astype("float32")


def test_pretraining_checkpoint_matches_numpy_forward():
    sd = release_state_dict()
    out = from_torch(sd)
    encoder, projector = out["encoder"], out["projector"]
    assert encoder.image_shape == (16, 16, 3) and encoder.num_heads == HEADS
    x = _images()
    ref = {k: v.astype("float64") for k, v in sd.items()}
    raw = torch_layout_forward(ref, x.astype("float64"), HEADS)
    tokens = layer_norm(raw, ref["norm.weight"], ref["norm.bias"], 1e-6)
    np.testing.assert_allclose(to_numpy(encoder(x)), tokens, atol=1e-4)
    np.testing.assert_allclose(to_numpy(projector(encoder(x), training=False)),
                               torch_projector_eval(ref, tokens), atol=2e-4)


def test_fine_tuned_checkpoint_matches_numpy_forward():
    sd = release_state_dict(fine_tuned=True)
    classifier = from_torch(sd)["classifier"]
    x = _images()
    ref = {k: v.astype("float64") for k, v in sd.items()}
    pooled = torch_layout_forward(ref, x.astype("float64"), HEADS)[:, 1:].mean(1)
    logits = layer_norm(pooled, ref["fc_norm.weight"], ref["fc_norm.bias"], 1e-6) @ ref["head.weight"].T + ref["head.bias"]
    # The classifier normalises uint8-range input itself: feed it the inverse.
    from keras_conmim.models.views import IMAGENET_MEAN, IMAGENET_STD
    raw_pixels = (x * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)) * 255.0
    np.testing.assert_allclose(to_numpy(classifier(raw_pixels.astype("float32"))), logits, atol=2e-4)


def test_unknown_and_missing_keys_are_named():
    sd = release_state_dict()
    sd["blocks.0.attn.k_bias"] = np.zeros(D, "float32")
    with pytest.raises(ValueError, match="blocks.0.attn.k_bias"):
        from_torch(sd)
    sd = release_state_dict()
    del sd["blocks.1.gamma_2"]
    with pytest.raises(ValueError, match="blocks_1/gamma_2"):
        from_torch(sd)
    sd = release_state_dict()
    sd["blocks.0.attn.qkv.weight"] = sd["blocks.0.attn.qkv.weight"][:, :4]
    with pytest.raises(ValueError, match="does not fit"):
        from_torch(sd)


def test_pth_file_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    path = str(tmp_path / "ckpt.pth")
    torch.save({"model": {k: torch.from_numpy(np.asarray(v)) for k, v in release_state_dict().items()}}, path)
    out = from_torch(path)
    assert set(out) == {"encoder", "projector"}


class _RunsCodeWhenUnpickled:
    """A pickle payload: unpickling it calls `Path.touch(marker)`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_pth_with_code_is_refused_and_runs_nothing(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    path = str(tmp_path / "evil.pth")
    weights = {k: torch.from_numpy(np.asarray(v)) for k, v in release_state_dict().items()}
    torch.save({"model": weights, "extra": _RunsCodeWhenUnpickled(str(marker))}, path)
    with pytest.raises(ValueError, match=r"evil\.pth was refused.*allow_unsafe_pickle=True"):
        from_torch(path)
    assert not marker.exists()


def test_pth_as_the_release_saves_it_loads_safely(tmp_path):
    """The release's `save_model` stores weights, optimizer state, epoch,
    scaler state and its argparse `args`: all of it loads with
    weights_only=True, and maps exactly as the dict does."""
    import argparse

    torch = pytest.importorskip("torch")
    sd = release_state_dict()
    path = str(tmp_path / "checkpoint-799.pth")
    torch.save({"model": {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()},
                "optimizer": {"state": {0: {"step": torch.tensor(3.0)}},
                              "param_groups": [{"lr": 1e-3, "params": [0]}]},
                "epoch": 799, "scaler": {"scale": 1024.0},
                "args": argparse.Namespace(model="pretrain_conmim_base_patch16_224", lr=5e-4)},
               path)
    from_file, from_dict = from_torch(path), from_torch(sd)
    for a, b in zip(from_file["encoder"].weights + from_file["projector"].weights,
                    from_dict["encoder"].weights + from_dict["projector"].weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_no_code_running_loaders_in_the_package():
    """No call that can execute a file's contents: pickle loads, unsafe
    torch / numpy loads, Keras' safe mode switched off, eval / exec. The one
    opt-in (`allow_unsafe_pickle`) is the documented exception in convert.py."""
    import os
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    banned = re.compile(r"safe_mode\s*=\s*False|pickle\.loads?\(|allow_pickle\s*=\s*True"
                        r"|(?<![\w.])(eval|exec)\(|weights_only\s*=\s*False|marshal\.loads?\(")
    found = []
    for folder in ("keras_conmim", "recipes", "bench"):
        for base, _, names in os.walk(os.path.join(root, folder)):
            for name in names:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(base, name)
                with open(path) as f:
                    for number, line in enumerate(f, 1):
                        if banned.search(line):
                            found.append(f"{os.path.relpath(path, root)}:{number}: {line.strip()}")
    # The documented opt-in, behind `if allow_unsafe_pickle:`, is the one exception.
    opt_in = [f for f in found if f.startswith(os.path.join("keras_conmim", "integrations", "convert.py"))
              and "weights_only=False" in f]
    assert len(opt_in) == 1, opt_in
    assert [f for f in found if f not in opt_in] == []
