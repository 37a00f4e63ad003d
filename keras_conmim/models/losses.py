"""ConMIM's patch-level InfoNCE and the lookup accuracy metric."""

from keras import ops


def l2_normalize(x, epsilon=1e-12):
    """`x / max(||x||, epsilon)` along the last axis (PyTorch's F.normalize)."""
    norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
    return x / ops.maximum(norm, epsilon)


def patch_logits(q, k, temperature=0.1):
    """`[B, N, N]` float32 logits: row j = student patch j against all N
    teacher patches of the same image (l2-normalised inside)."""
    q = l2_normalize(ops.cast(q, "float32"))
    k = l2_normalize(ops.cast(k, "float32"))
    return ops.einsum("bnp,bmp->bnm", q, k) / temperature


def info_nce_and_accuracy(q, k, patch_mask, temperature=0.1):
    """`(patch_info_nce, lookup_accuracy)` from one logits computation."""
    logits = patch_logits(q, k, temperature)
    log_probs = logits - ops.logsumexp(logits, axis=-1, keepdims=True)
    positive = ops.diagonal(log_probs, axis1=1, axis2=2)  # [B, N]
    hits = ops.argmax(logits, axis=-1) == ops.arange(logits.shape[1])[None]
    m = ops.cast(patch_mask, "float32")
    count = ops.maximum(ops.sum(m), 1.0)
    return -ops.sum(positive * m) / count, ops.sum(ops.cast(hits, "float32") * m) / count


def patch_info_nce(q, k, patch_mask, temperature=0.1):
    """Patch InfoNCE (ConMIM), mean over the masked patches of the batch.

    For each masked patch j the positive is the teacher's feature at j and
    the negatives are the same image's other N - 1 teacher patches (no other
    images, no queue). Logits and softmax are computed in float32.

    Args:
        q: `[B, N, P]` student features (CLS dropped).
        k: `[B, N, P]` teacher features (stop-gradient is the caller's job).
        patch_mask: `[B, N]` bool, True where the patch was masked.
        temperature: float. Defaults to `0.1`.

    Returns:
        A float32 scalar.
    """
    return info_nce_and_accuracy(q, k, patch_mask, temperature)[0]


def lookup_accuracy(q, k, patch_mask):
    """Fraction of masked patches whose most similar teacher patch (cosine)
    is the one at their own position. Chance is 1 / N."""
    return info_nce_and_accuracy(q, k, patch_mask)[1]


def patchify(images, patch_size):
    """`[B, H, W, C]` -> `[B, N, p * p * C]`, patches row-major, pixels
    ordered (row, col, channel) inside a patch."""
    h, w, c = images.shape[1], images.shape[2], images.shape[3]
    p = patch_size
    x = ops.reshape(images, (-1, h // p, p, w // p, p, c))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, (h // p) * (w // p), p * p * c))


def masked_pixel_l1(predicted, target, patch_mask):
    """SimMIM's loss: mean absolute error over the pixels of masked patches.

    Args:
        predicted, target: `[B, N, p * p * C]`.
        patch_mask: `[B, N]` bool.
    """
    error = ops.mean(ops.abs(ops.cast(predicted, "float32") - ops.cast(target, "float32")), axis=-1)
    m = ops.cast(patch_mask, "float32")
    return ops.sum(error * m) / ops.maximum(ops.sum(m), 1.0)
