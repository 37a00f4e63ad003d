"""Plain-numpy forward passes that the Keras code is checked against.

Written from the method (docs/method.md) and the release's names, not from the Keras code:
PyTorch-style layouts are rebuilt from the Keras weights by name.
"""

import math

import numpy as np

_erf = np.vectorize(math.erf)


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def layer_norm(x, gamma, beta, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def relative_index(h, w):
    """Spec: index[1+a, 1+b] = (ya-yb+h-1)*(2w-1) + (xa-xb+w-1), CLS rows."""
    n = h * w
    t = (2 * h - 1) * (2 * w - 1) + 3
    index = np.zeros((n + 1, n + 1), int)
    for a in range(n):
        for b in range(n):
            ya, xa, yb, xb = a // w, a % w, b // w, b % w
            index[1 + a, 1 + b] = (ya - yb + h - 1) * (2 * w - 1) + (xa - xb + w - 1)
    index[0, :] = t - 3
    index[:, 0] = t - 2
    index[0, 0] = t - 1
    return index


def weights_by_name(layer):
    """`{path-without-top-level-name: numpy array}`."""
    import keras

    return {v.path.split("/", 1)[1]: np.asarray(keras.ops.convert_to_numpy(v), "float64")
            for v in layer.weights}


def vit_forward(w, config, images, patch_mask=None):
    """ViT forward in float64. `w` from `weights_by_name(vit)`."""
    p = config["patch_size"]
    heads = config["num_heads"]
    eps = config["layer_norm_epsilon"]
    b, hh, ww, c = images.shape
    gh, gw = hh // p, ww // p
    n = gh * gw
    # Patch conv as a matmul on flattened (p, p, C) patches.
    patches = images.reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, n, p * p * c)
    kernel = w["patch_embed/proj/kernel"].reshape(p * p * c, -1)
    x = patches @ kernel + w["patch_embed/proj/bias"]
    d = x.shape[-1]
    if patch_mask is not None:
        m = patch_mask[..., None].astype("float64")
        x = x * (1 - m) + w["mask_token"] * m
    x = np.concatenate([np.broadcast_to(w["cls_token"], (b, 1, d)), x], axis=1)
    if "pos_embed" in w:
        x = x + w["pos_embed"]
    shared = None
    if "rel_pos_bias/relative_position_bias_table" in w:
        shared = w["rel_pos_bias/relative_position_bias_table"][relative_index(gh, gw)].transpose(2, 0, 1)
    hd = d // heads
    for i in range(config["num_layers"]):
        pre = f"blocks_{i}/"
        bias = shared
        if pre + "relative_position_bias/relative_position_bias_table" in w:
            table = w[pre + "relative_position_bias/relative_position_bias_table"]
            bias = table[relative_index(gh, gw)].transpose(2, 0, 1)
        y = layer_norm(x, w[pre + "norm1/gamma"], w[pre + "norm1/beta"], eps)
        qkv_bias = np.concatenate([w[pre + "attn/q_bias"], np.zeros(d), w[pre + "attn/v_bias"]])
        qkv = (y @ w[pre + "attn/qkv_kernel"] + qkv_bias).reshape(b, n + 1, 3, heads, hd)
        qkv = qkv.transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * hd ** -0.5, qkv[1], qkv[2]
        logits = q @ k.transpose(0, 1, 3, 2)
        if bias is not None:
            logits = logits + bias[None]
        y = (softmax(logits) @ v).transpose(0, 2, 1, 3).reshape(b, n + 1, d)
        y = y @ w[pre + "attn/proj_kernel"] + w[pre + "attn/proj_bias"]
        x = x + w.get(pre + "gamma_1", 1.0) * y
        y = layer_norm(x, w[pre + "norm2/gamma"], w[pre + "norm2/beta"], eps)
        y = gelu(y @ w[pre + "fc1/kernel"] + w[pre + "fc1/bias"]) @ w[pre + "fc2/kernel"] + w[pre + "fc2/bias"]
        x = x + w.get(pre + "gamma_2", 1.0) * y
    return layer_norm(x, w["norm/gamma"], w["norm/beta"], eps)


def projector_forward(w, num_layers, tokens, eps=1e-5):
    """Projection head in training mode (batch statistics over all tokens)."""
    x = tokens
    for i in range(num_layers):
        x = x @ w[f"dense_{i}/kernel"]
        flat = x.reshape(-1, x.shape[-1])
        x = (x - flat.mean(0)) / np.sqrt(flat.var(0) + eps)
        if i < num_layers - 1:
            x = np.maximum(x * w[f"batch_norm_{i}/gamma"] + w[f"batch_norm_{i}/beta"], 0.0)
    return x


def info_nce(q, k, mask, temperature=0.1):
    """Spec step 8, with explicit loops over images and masked rows."""
    losses, hits = [], []
    for i in range(q.shape[0]):
        qi = q[i] / np.linalg.norm(q[i], axis=-1, keepdims=True)
        ki = k[i] / np.linalg.norm(k[i], axis=-1, keepdims=True)
        logits = qi @ ki.T / temperature
        for j in np.flatnonzero(mask[i]):
            row = logits[j] - logits[j].max()
            losses.append(-(row[j] - np.log(np.exp(row).sum())))
            hits.append(float(np.argmax(logits[j]) == j))
    return float(np.mean(losses)), float(np.mean(hits))


def torch_layout_forward(sd, images, num_heads, eps=1e-6):
    """The release's BEiT forward on its own PyTorch names and layouts
    (Linear: x @ W.T + b; conv weight [D, C, p, p]), float64. Returns the
    tokens before any final norm, and the per-spec pieces used below."""
    w = sd["patch_embed.proj.weight"]
    d, c, p, _ = w.shape
    b, hh, ww, _ = images.shape
    gh, gw = hh // p, ww // p
    x = images.transpose(0, 3, 1, 2)  # NCHW, as torch sees it
    patches = x.reshape(b, c, gh, p, gw, p).transpose(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * p * p)
    x = patches @ w.reshape(d, -1).T + sd["patch_embed.proj.bias"]
    x = np.concatenate([np.broadcast_to(sd["cls_token"], (b, 1, d)), x], axis=1)
    hd = d // num_heads
    index = relative_index(gh, gw)
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        k = f"blocks.{i}."
        table = sd.get(k + "attn.relative_position_bias_table",
                       sd.get("rel_pos_bias.relative_position_bias_table"))
        bias = table[index].transpose(2, 0, 1)
        y = layer_norm(x, sd[k + "norm1.weight"], sd[k + "norm1.bias"], eps)
        qkv_b = np.concatenate([sd[k + "attn.q_bias"], np.zeros(d), sd[k + "attn.v_bias"]])
        qkv = (y @ sd[k + "attn.qkv.weight"].T + qkv_b).reshape(b, -1, 3, num_heads, hd).transpose(2, 0, 3, 1, 4)
        attn = softmax((qkv[0] * hd ** -0.5) @ qkv[1].transpose(0, 1, 3, 2) + bias[None])
        y = (attn @ qkv[2]).transpose(0, 2, 1, 3).reshape(b, -1, d)
        x = x + sd[k + "gamma_1"] * (y @ sd[k + "attn.proj.weight"].T + sd[k + "attn.proj.bias"])
        y = layer_norm(x, sd[k + "norm2.weight"], sd[k + "norm2.bias"], eps)
        y = gelu(y @ sd[k + "mlp.fc1.weight"].T + sd[k + "mlp.fc1.bias"])
        x = x + sd[k + "gamma_2"] * (y @ sd[k + "mlp.fc2.weight"].T + sd[k + "mlp.fc2.bias"])
        i += 1
    return x


def torch_projector_eval(sd, tokens, eps=1e-5):
    """projectors.* in eval mode (running statistics)."""
    x, i = tokens, 0
    while f"projectors.{3 * i}.weight" in sd:
        x = x @ sd[f"projectors.{3 * i}.weight"].T
        bn = f"projectors.{3 * i + 1}."
        x = (x - sd[bn + "running_mean"]) / np.sqrt(sd[bn + "running_var"] + eps)
        if bn + "weight" in sd:
            x = np.maximum(x * sd[bn + "weight"] + sd[bn + "bias"], 0.0)
        i += 1
    return x
