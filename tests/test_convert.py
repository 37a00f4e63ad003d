import numpy as np
import pytest

from keras_conmim.convert import from_torch
from keras_conmim.layers import relative_position_index
from keras_conmim.views import normalize_images  # noqa: F401
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
    from keras_conmim.views import IMAGENET_MEAN, IMAGENET_STD
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
