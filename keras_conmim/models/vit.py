"""The ViT encoder (BEiT-style, as in the ConMIM release)."""

import os

import keras
import numpy as np
from keras import ops

from keras_conmim.atomic import save_preset

from keras_conmim.models.layers import (
    PACKAGE,
    PatchEmbedding,
    RelativePositionBias,
    TransformerBlock,
    sincos_position_embedding,
    trunc_normal,
)
from keras_conmim.models.loading import load_encoder
from keras_conmim.presets import POOLINGS, PRESETS, WEIGHTS, get_preset

POSITION_EMBEDDINGS = ("relative", "absolute", "sincos")
MASK_TOKEN_POSITIONS = ("none", "sincos")


@keras.saving.register_keras_serializable(package=PACKAGE)
class ViT(keras.Model):
    """Vision Transformer encoder for ConMIM (BEiT layout).

    Takes float images `[B, H, W, C]` (normalised, see `PairedViews`) and an
    optional `patch_mask` `[B, N]` (bool; True = masked) and returns ALL
    tokens after the final LayerNorm, CLS first: `[B, 1 + N, hidden_dim]`.
    Masked patch embeddings are replaced by a learned `mask_token` before
    the blocks (BEiT/ConMIM: no token dropping).

    Args:
        image_shape: tuple of 3 ints. `(height, width, channels)`; height and
            width divisible by `patch_size`, 1 or 3 channels. Defaults to
            `(224, 224, 3)`.
        patch_size: int. Side of the square patches. Defaults to `16`.
        num_layers: int. Number of transformer blocks. Defaults to `12`.
        num_heads: int. Attention heads. Defaults to `12`.
        hidden_dim: int. Token width. Defaults to `768`.
        mlp_dim: int. MLP hidden width. Defaults to `3072`.
        position_embedding: str. `"relative"` (BEiT relative position bias,
            the release's choice), `"absolute"` (learned table) or `"sincos"`
            (fixed 2D sin-cos). Defaults to `"relative"`.
        use_shared_relative_position_bias: bool. With relative positions, one
            table shared by all blocks (pre-training) or one per block
            (fine-tuning). Defaults to `True`.
        layer_scale_init_value: float or None. LayerScale init (`None` turns it
            off). Defaults to `0.1` (the release uses 1e-5 for ViT-L).
        drop_path_rate: float. Stochastic depth at the last block, linear
            from 0 at the first. Defaults to `0.0`.
        layer_norm_epsilon: float. Defaults to `1e-6`.
        use_mask_token: bool. Create the learned mask token (needed for
            `patch_mask`). Defaults to `True`.
        use_final_norm: bool. Apply the final LayerNorm to the tokens. The
            release's fine-tuned models drop it (they mean-pool, then apply
            `fc_norm`); imported fine-tuned checkpoints set it to False.
            Defaults to `True`.
        mask_token_position: str. `"none"` (the release): every masked patch
            enters as the same `mask_token`. `"sincos"`: the mask token at
            patch j is `mask_token + scale * sincos_j`, a fixed 2D sin-cos
            code (no weights). With relative positions only, identical mask
            tokens stay identical through every block until the bias table
            has grown, which holds short runs at chance; the code breaks that
            symmetry from step 0. Only masked tokens carry it, so the teacher
            (which sees no mask) gets no absolute position to match.
            Defaults to `"none"`.
        mask_token_position_scale: float. `scale` above. Defaults to `0.02`
            (the init std of the tokens).
        fused_attention: bool. Attention through
            `keras.ops.dot_product_attention` (flash / SDPA kernels where
            the backend has them) rather than the release's explicit
            matmul-softmax-matmul; equal within float tolerance (tested).
            Defaults to `True`.

    Example:

    ```python
    encoder = keras_conmim.ViT.from_preset("vit_mini_p4_28")
    tokens = encoder(np.zeros((2, 28, 28, 1), "float32"))      # [2, 50, 128]
    pooled = encoder.pool(tokens)                               # [2, 128]
    ```
    """

    def __init__(
        self,
        image_shape=(224, 224, 3),
        patch_size=16,
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        mlp_dim=3072,
        position_embedding="relative",
        use_shared_relative_position_bias=True,
        layer_scale_init_value=0.1,
        drop_path_rate=0.0,
        layer_norm_epsilon=1e-6,
        use_mask_token=True,
        use_final_norm=True,
        mask_token_position="none",
        mask_token_position_scale=0.02,
        fused_attention=True,
        **kwargs,
    ):
        kwargs.setdefault("name", "vit")
        super().__init__(**kwargs)
        image_shape = tuple(int(s) for s in image_shape)
        _validate(image_shape, patch_size, num_layers, num_heads, hidden_dim,
                  position_embedding, drop_path_rate)
        if mask_token_position not in MASK_TOKEN_POSITIONS:
            raise ValueError(
                f"Unknown mask_token_position {mask_token_position!r}. Valid: "
                f"{', '.join(MASK_TOKEN_POSITIONS)}.")
        self.image_shape = image_shape
        self.patch_size = patch_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.mlp_dim = mlp_dim
        self.position_embedding = position_embedding
        self.use_shared_relative_position_bias = use_shared_relative_position_bias
        self.layer_scale_init_value = layer_scale_init_value
        self.drop_path_rate = drop_path_rate
        self.layer_norm_epsilon = layer_norm_epsilon
        self.use_mask_token = use_mask_token
        self.use_final_norm = use_final_norm
        self.mask_token_position = mask_token_position
        self.mask_token_position_scale = float(mask_token_position_scale)
        self.fused_attention = bool(fused_attention)

        self.grid_size = (image_shape[0] // patch_size, image_shape[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self._mask_position_code = None
        if mask_token_position == "sincos":
            self._mask_position_code = self.mask_token_position_scale * (
                sincos_position_embedding(self.grid_size, hidden_dim)[None])
        relative = position_embedding == "relative"
        per_block_bias = relative and not use_shared_relative_position_bias
        p = self.dtype_policy

        self.patch_embedding = PatchEmbedding(
            hidden_dim, patch_size, dtype=p, name="patch_embed"
        )
        self.shared_relative_position_bias = None
        if relative and use_shared_relative_position_bias:
            self.shared_relative_position_bias = RelativePositionBias(
                self.grid_size, num_heads, dtype=p, name="rel_pos_bias"
            )
        self.blocks = [
            TransformerBlock(
                hidden_dim,
                num_heads,
                mlp_dim,
                drop_path_rate=drop_path_rate * i / max(num_layers - 1, 1),
                layer_scale_init_value=layer_scale_init_value,
                layer_norm_epsilon=layer_norm_epsilon,
                # The release rescales block l's output projections by sqrt(2 l).
                output_init_scale=float(1.0 / np.sqrt(2.0 * (i + 1))),
                use_relative_position_bias=per_block_bias,
                grid_size=self.grid_size,
                fused_attention=fused_attention,
                dtype=p,
                name=f"blocks_{i}",
            )
            for i in range(num_layers)
        ]
        self.norm = None
        if use_final_norm:
            self.norm = keras.layers.LayerNormalization(
                epsilon=layer_norm_epsilon, dtype=p, name="norm"
            )
        self.build((None,) + image_shape)

    def build(self, input_shape):
        if self.built:  # built in __init__; building again is a no-op, as for Keras' layers
            return
        self.patch_embedding.build(input_shape)
        self.cls_token = self.add_weight(
            shape=(1, 1, self.hidden_dim), initializer=trunc_normal(), name="cls_token"
        )
        if self.use_mask_token:
            self.mask_token = self.add_weight(
                shape=(1, 1, self.hidden_dim), initializer=trunc_normal(),
                name="mask_token",
            )
        if self.position_embedding == "absolute":
            self.pos_embed = self.add_weight(
                shape=(1, self.num_patches + 1, self.hidden_dim),
                initializer=trunc_normal(), name="pos_embed",
            )
        elif self.position_embedding == "sincos":
            table = sincos_position_embedding(self.grid_size, self.hidden_dim)
            table = np.concatenate([np.zeros((1, self.hidden_dim), "float32"), table])
            self.pos_embed = self.add_weight(
                shape=(1, self.num_patches + 1, self.hidden_dim),
                initializer=keras.initializers.Constant(table[None]),
                trainable=False, name="pos_embed",
            )
        if self.shared_relative_position_bias is not None:
            self.shared_relative_position_bias.build()
        token_shape = (None, self.num_patches + 1, self.hidden_dim)
        for block in self.blocks:
            block.build(token_shape)
        if self.norm is not None:
            self.norm.build(token_shape)
        self.built = True

    def forward_features(self, images, patch_mask=None, training=None):
        """Run the encoder and return named intermediates.

        Returns a dict: `tokens` `[B, 1+N, D]` (after the final norm),
        `cls_token` `[B, D]`, `patch_tokens` `[B, N, D]`, `blocks` (list of
        each block's raw output) and `grid_size`.
        """
        x = self.patch_embedding(ops.cast(images, self.compute_dtype))
        if patch_mask is not None:
            if not self.use_mask_token:
                raise ValueError(
                    "patch_mask was given but this ViT was built with "
                    "use_mask_token=False. Build it with use_mask_token=True."
                )
            m = ops.cast(ops.expand_dims(patch_mask, -1), x.dtype)
            mask_token = ops.cast(self.mask_token, x.dtype)
            if self._mask_position_code is not None:
                mask_token = mask_token + ops.convert_to_tensor(
                    self._mask_position_code, dtype=x.dtype)
            x = x * (1 - m) + mask_token * m
        cls = ops.broadcast_to(
            ops.cast(self.cls_token, x.dtype), (ops.shape(x)[0], 1, self.hidden_dim)
        )
        x = ops.concatenate([cls, x], axis=1)
        if self.position_embedding in ("absolute", "sincos"):
            x = x + ops.cast(self.pos_embed, x.dtype)
        bias = None
        if self.shared_relative_position_bias is not None:
            bias = self.shared_relative_position_bias()
        block_outputs = []
        for block in self.blocks:
            x = block(x, bias=bias, training=training)
            block_outputs.append(x)
        tokens = self.norm(x) if self.norm is not None else x
        return {
            "tokens": tokens,
            "cls_token": tokens[:, 0],
            "patch_tokens": tokens[:, 1:],
            "blocks": block_outputs,
            "grid_size": self.grid_size,
        }

    def call(self, images, patch_mask=None, training=None):
        return self.forward_features(images, patch_mask, training)["tokens"]

    @staticmethod
    def pool(tokens, method="mean"):
        """Pooled feature from `call`'s tokens: `"mean"` of the patch tokens
        (the release's fine-tuning pooling), the `"cls"` token, or the patch
        tokens `"flatten"`ed in grid order, `[B, N * D]` (keeps where each
        patch is: mean pooling of a ViT without absolute position embedding
        keeps only what the patches are), or `"mean+flatten"`: the mean
        followed by the flattened tokens, `[B, (N + 1) * D]` (what the patches
        are and where)."""
        if method == "mean":
            return ops.mean(tokens[:, 1:], axis=1)
        if method == "cls":
            return tokens[:, 0]
        if method == "flatten":
            return ops.reshape(tokens[:, 1:], (-1, (tokens.shape[1] - 1) * tokens.shape[2]))
        if method == "mean+flatten":
            return ops.concatenate([ViT.pool(tokens, "mean"), ViT.pool(tokens, "flatten")], axis=-1)
        raise ValueError(f"Unknown pooling {method!r}. Use one of {', '.join(POOLINGS)}.")

    def pooled_dim(self, method="mean"):
        """The width of `pool(tokens, method)`: D, N * D for "flatten",
        (N + 1) * D for "mean+flatten"."""
        if method not in POOLINGS:
            raise ValueError(f"Unknown pooling {method!r}. Use one of {', '.join(POOLINGS)}.")
        widths = {"flatten": self.num_patches, "mean+flatten": self.num_patches + 1}
        return self.hidden_dim * widths.get(method, 1)

    def no_weight_decay_variables(self):
        """Variables the release keeps out of weight decay: biases, norms,
        LayerScale-free 1-D parameters, CLS/mask tokens, position tables."""
        skip = []
        for v in self.weights:
            name = v.path.split("/")[-1]
            if len(v.shape) <= 1 or name in (
                "cls_token", "mask_token", "pos_embed", "relative_position_bias_table"
            ):
                skip.append(v)
        return skip

    def layer_groups(self):
        """Variables per layer-wise lr decay group (docs/method.md; the release's
        `get_num_layer_for_vit`): group 0 = patch embedding, CLS, mask token
        and an absolute position embedding; group i+1 = block i (with its own
        relative bias table, once fine-tuning copied the shared one in); last
        group = final norm and the shared relative position bias (scale 1)."""
        groups = [list(self.patch_embedding.weights)
                  + [self.cls_token]
                  + ([self.mask_token] if self.use_mask_token else [])
                  + ([self.pos_embed] if self.position_embedding in ("absolute", "sincos") else [])]
        groups += [list(block.weights) for block in self.blocks]
        last = list(self.norm.weights) if self.norm is not None else []
        if self.shared_relative_position_bias is not None:
            last += list(self.shared_relative_position_bias.weights)
        groups.append(last)
        return groups

    @classmethod
    def from_preset(cls, name, load_weights=True, **kwargs):
        """A ViT from a preset, KerasHub-style.

        `name`: an architecture preset (`keras_conmim.presets.PRESETS`,
        random init), a preset that carries weights
        (`keras_conmim.list_presets()`, e.g. `"conmim_vit_mini_p4_28_fmnist"`;
        a folder written by `save_to_preset` (this class's or a KerasHub
        backbone's), or a `.keras` file. `load_weights=False` gives the
        architecture at random init. Keyword arguments override config
        values that do not change the weights' shapes (`drop_path_rate`,
        `fused_attention`, ...)."""
        is_path = name not in WEIGHTS and os.path.exists(name)
        if not is_path and (name in PRESETS or not load_weights or name not in WEIGHTS):
            # the architecture alone (an unknown name: get_preset says so)
            return cls(**{**get_preset(name)["config"], **kwargs})
        encoder = load_encoder(name)  # a file or folder: its config, and its weights if asked
        if load_weights and not kwargs and encoder.name == "vit" and type(encoder) is cls:
            return encoder
        rebuilt = cls.from_config({**encoder.get_config(), "name": "vit", **kwargs})
        if load_weights:
            rebuilt.set_weights(encoder.get_weights())
        return rebuilt

    def save_to_preset(self, preset_dir):
        """Write a preset folder (`config.json`, `model.weights.h5`,
        `metadata.json`, KerasHub's layout) that `ViT.from_preset(preset_dir)`
        loads."""
        return save_preset(self, preset_dir)

    def get_config(self):
        config = super().get_config()
        config.update(
            image_shape=self.image_shape,
            patch_size=self.patch_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            hidden_dim=self.hidden_dim,
            mlp_dim=self.mlp_dim,
            position_embedding=self.position_embedding,
            use_shared_relative_position_bias=self.use_shared_relative_position_bias,
            layer_scale_init_value=self.layer_scale_init_value,
            drop_path_rate=self.drop_path_rate,
            layer_norm_epsilon=self.layer_norm_epsilon,
            use_mask_token=self.use_mask_token,
            use_final_norm=self.use_final_norm,
            mask_token_position=self.mask_token_position,
            mask_token_position_scale=self.mask_token_position_scale,
            fused_attention=self.fused_attention,
        )
        return config


def _validate(image_shape, patch_size, num_layers, num_heads, hidden_dim,
              position_embedding, drop_path_rate):
    if len(image_shape) != 3 or image_shape[-1] not in (1, 3):
        raise ValueError(
            "image_shape must be (height, width, channels) with 1 or 3 "
            f"channels, received {image_shape}."
        )
    if patch_size < 1 or image_shape[0] % patch_size or image_shape[1] % patch_size:
        raise ValueError(
            f"patch_size={patch_size} must divide the image height and width "
            f"{image_shape[:2]}. Pick a patch size that divides both, or "
            "resize the images."
        )
    if num_layers < 1 or num_heads < 1 or hidden_dim % num_heads:
        raise ValueError(
            f"Need num_layers >= 1 and num_heads dividing hidden_dim; received "
            f"num_layers={num_layers}, num_heads={num_heads}, hidden_dim={hidden_dim}."
        )
    if position_embedding not in POSITION_EMBEDDINGS:
        raise ValueError(
            f"Unknown position_embedding {position_embedding!r}. Valid: "
            f"{', '.join(POSITION_EMBEDDINGS)}."
        )
    if not 0 <= drop_path_rate < 1:
        raise ValueError(f"drop_path_rate must be in [0, 1), received {drop_path_rate}.")
