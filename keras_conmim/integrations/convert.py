"""Import the authors' PyTorch checkpoints (BEiT-style names) into Keras.

The layout is listed in docs/method.md: Linear weights are `[out, in]` (transposed
for Keras), the patch conv is `[D, C, p, p]` (Keras: `[p, p, C, D]`). Both
the pre-training layout (shared relative bias, `norm`, `projectors.*`) and
the fine-tuned one (per-block bias tables, `fc_norm`, `head`) are read.
torch is needed only to open `.pth` files; a dict of numpy arrays works
without it.
"""

import argparse
import math
import os
import pickle
import re

import numpy as np

from keras_conmim.models.layers import relative_position_index

IGNORED = re.compile(r"^(lm_head\..*|.*relative_position_index|.*num_batches_tracked)$")


def load_state_dict(state_dict_or_path, allow_unsafe_pickle=False):
    """A `{name: numpy array}` dict from a dict (numpy or torch tensors) or a
    `.pth` path; unwraps `{"model": ...}` / `{"state_dict": ...}`.

    A `.pth` file is a pickle, and a pickle can run code when it is opened.
    It is read with `torch.load(weights_only=True)`: tensors, numbers,
    strings and containers only, plus `argparse.Namespace` (the `args` the
    release saves beside its weights), so opening a file executes nothing
    from it. A file that needs more is refused with the reason.
    `allow_unsafe_pickle=True` unpickles anything: UNSAFE, only for a file
    you made yourself or trust as you would a program.
    """
    state = state_dict_or_path
    if isinstance(state, (str, os.PathLike)):
        state = _read_pth(os.fspath(state), allow_unsafe_pickle)
    for key in ("model", "state_dict", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    out = {}
    for k, v in state.items():
        if hasattr(v, "detach"):
            v = v.detach().cpu().numpy()
        out[k[len("module."):] if k.startswith("module.") else k] = np.asarray(v)
    return out


def _read_pth(path, allow_unsafe_pickle):
    try:
        import torch
    except ImportError as e:
        raise ImportError("Reading a .pth file needs torch (pip install torch); "
                          "or pass a dict of numpy arrays.") from e
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file.")
    if allow_unsafe_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path} was refused: it holds objects other than tensors and plain containers, "
            "and unpickling them could run code from the file (torch says: "
            f"{str(e).splitlines()[0] if str(e) else e}). The release's checkpoints hold "
            "tensors only. If you made this file yourself or trust it as you would a "
            "program, pass allow_unsafe_pickle=True (UNSAFE: the file can run any code).") from e

def infer_vit_config(state, num_heads=None):
    """ViT arguments from tensor shapes (image size from the bias table)."""
    d, c, p, _ = state["patch_embed.proj.weight"].shape
    layers = 1 + max(int(m.group(1)) for k in state for m in [re.match(r"blocks\.(\d+)\.", k)] if m)
    table = state.get("rel_pos_bias.relative_position_bias_table",
                      state.get("blocks.0.attn.relative_position_bias_table"))
    if table is None:
        raise ValueError("No relative position bias table in the state dict: the release's "
                         "checkpoints always have one. Is this a ConMIM/BEiT checkpoint?")
    side = (math.isqrt(table.shape[0] - 3) + 1) // 2
    if (2 * side - 1) ** 2 + 3 != table.shape[0]:
        raise ValueError(f"Bias table of {table.shape[0]} rows is not a square grid's.")
    heads = num_heads or table.shape[1]
    return dict(
        image_shape=(side * p, side * p, c), patch_size=p, num_layers=layers, num_heads=heads,
        hidden_dim=d, mlp_dim=state["blocks.0.mlp.fc1.weight"].shape[0],
        position_embedding="relative",
        use_shared_relative_position_bias="rel_pos_bias.relative_position_bias_table" in state,
        layer_scale_init_value=0.1 if "blocks.0.gamma_1" in state else None,
        use_mask_token="mask_token" in state,
    )


def _encoder_map(config):
    """release name -> (our variable name, transform)."""
    t = np.transpose
    m = {
        "patch_embed.proj.weight": ("patch_embed/proj/kernel", lambda w: t(w, (2, 3, 1, 0))),
        "patch_embed.proj.bias": ("patch_embed/proj/bias", None),
        "cls_token": ("cls_token", None),
        "mask_token": ("mask_token", None),
        "rel_pos_bias.relative_position_bias_table": ("rel_pos_bias/relative_position_bias_table", None),
        "norm.weight": ("norm/gamma", None),
        "norm.bias": ("norm/beta", None),
    }
    for i in range(config["num_layers"]):
        b, o = f"blocks.{i}.", f"blocks_{i}/"
        m.update({
            b + "norm1.weight": (o + "norm1/gamma", None), b + "norm1.bias": (o + "norm1/beta", None),
            b + "attn.qkv.weight": (o + "attn/qkv_kernel", t),
            b + "attn.q_bias": (o + "attn/q_bias", None), b + "attn.v_bias": (o + "attn/v_bias", None),
            b + "attn.proj.weight": (o + "attn/proj_kernel", t), b + "attn.proj.bias": (o + "attn/proj_bias", None),
            b + "attn.relative_position_bias_table":
                (o + "relative_position_bias/relative_position_bias_table", None),
            b + "gamma_1": (o + "gamma_1", None), b + "gamma_2": (o + "gamma_2", None),
            b + "norm2.weight": (o + "norm2/gamma", None), b + "norm2.bias": (o + "norm2/beta", None),
            b + "mlp.fc1.weight": (o + "fc1/kernel", t), b + "mlp.fc1.bias": (o + "fc1/bias", None),
            b + "mlp.fc2.weight": (o + "fc2/kernel", t), b + "mlp.fc2.bias": (o + "fc2/bias", None),
        })
    return m


def _projector_map(num_layers):
    m = {}
    for i in range(num_layers):
        lin, bn = f"projectors.{3 * i}.", f"projectors.{3 * i + 1}."
        m[lin + "weight"] = (f"dense_{i}/kernel", np.transpose)
        m[bn + "weight"] = (f"batch_norm_{i}/gamma", None)
        m[bn + "bias"] = (f"batch_norm_{i}/beta", None)
        m[bn + "running_mean"] = (f"batch_norm_{i}/moving_mean", None)
        m[bn + "running_var"] = (f"batch_norm_{i}/moving_variance", None)
    return m


def _assign(layer, mapping, state, used):
    targets = {v.path.split("/", 1)[1]: v for v in layer.weights}
    filled = set()
    for key, (name, transform) in mapping.items():
        if key not in state:
            continue
        if name not in targets:
            raise ValueError(f"Checkpoint key {key!r} maps to {name!r}, which this model lacks.")
        value = state[key] if transform is None else transform(state[key])
        if tuple(value.shape) != tuple(targets[name].shape):
            raise ValueError(f"{key}: shape {state[key].shape} does not fit {name} "
                             f"{tuple(targets[name].shape)}.")
        targets[name].assign(value.astype("float32"))
        used.add(key)
        filled.add(name)
    missing = sorted(set(targets) - filled)
    if missing:
        raise ValueError(f"The checkpoint leaves these {type(layer).__name__} weights unset: {missing}.")


def from_torch(state_dict_or_path, num_heads=None, allow_unsafe_pickle=False):
    """Build Keras models from a ConMIM release checkpoint.

    Returns a dict with `encoder` (`ViT`), and, when the checkpoint holds
    them, `projector` (`ProjectionHead`, pre-training layout) and
    `classifier` (`ViTClassifier` around the encoder, fine-tuned layout).
    Any key it does not know, any weight it cannot fill, is an error naming it.
    A `.pth` path is read without running code from it (`load_state_dict`;
    `allow_unsafe_pickle=True` lifts that, UNSAFE).
    """
    from keras_conmim.downstream.classifier import ViTClassifier
    from keras_conmim.models.projector import ProjectionHead
    from keras_conmim.models.vit import ViT

    state = load_state_dict(state_dict_or_path, allow_unsafe_pickle)
    config = infer_vit_config(state, num_heads)
    used = {k for k in state if IGNORED.match(k)}
    grid = (config["image_shape"][0] // config["patch_size"],) * 2
    for k in state:
        if k.endswith("relative_position_index") and not np.array_equal(
                state[k], relative_position_index(grid)):
            raise ValueError(f"{k} differs from BEiT's index for a {grid} grid.")
    fine_tuned = "fc_norm.weight" in state
    # The release's fine-tuned models mean-pool the raw tokens, then fc_norm.
    encoder = ViT(**config, use_final_norm=not fine_tuned, name="vit")
    _assign(encoder, _encoder_map(config), state, used)
    out = {"encoder": encoder}
    linears = sorted(int(m.group(1)) for k in state
                     for m in [re.match(r"projectors\.(\d+)\.weight$", k)] if m and int(m.group(1)) % 3 == 0)
    if linears:
        layers = len(linears)
        hidden = state["projectors.0.weight"].shape[0]
        output = state[f"projectors.{3 * (layers - 1)}.weight"].shape[0]
        projector = ProjectionHead(hidden, output, num_layers=layers)
        projector.build((None, encoder.num_patches + 1, config["hidden_dim"]))
        _assign(projector, _projector_map(layers), state, used)
        out["projector"] = projector
    if fine_tuned:
        classifier = ViTClassifier(encoder, num_classes=state["head.weight"].shape[0])
        classifier.fc_norm.gamma.assign(state["fc_norm.weight"])
        classifier.fc_norm.beta.assign(state["fc_norm.bias"])
        classifier.head.kernel.assign(state["head.weight"].T)
        classifier.head.bias.assign(state["head.bias"])
        used.update({"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"})
        out["classifier"] = classifier
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"Checkpoint keys this converter does not know: {unused}.")
    return out
