"""KerasHub adapters: a pre-trained encoder as a `FeaturePyramidBackbone`
for KerasHub's detection and segmentation heads, as an `ImageClassifier`,
and (absolute-position encoders) as KerasHub's own `ViTBackbone`.

Needs `keras-hub` (`pip install keras-conmim[cv]`); the core package does
not import this module.

    import keras_hub
    from keras_conmim.integrations.kerashub import ViTPyramidBackbone

    encoder = keras_conmim.load_encoder("conmim_vit_mini_p4_28_fmnist")
    backbone = ViTPyramidBackbone(encoder, image_shape=(64, 64, 1))
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=keras_hub.models.RetinaNetBackbone(
            image_encoder=backbone, min_level=3, max_level=5, use_p5=False,
            image_shape=(64, 64, 1)),
        anchor_generator=..., num_classes=10)
"""

import keras
import keras_hub
import numpy as np

from keras_conmim.models.layers import PACKAGE, config_with_layers
from keras_conmim.downstream.pyramid import PyramidBackboneMixin, build_pyramid

LEVEL_NAMINGS = ("stride", "mit")


@keras.saving.register_keras_serializable(package=PACKAGE)
class ViTPyramidBackbone(PyramidBackboneMixin, keras_hub.models.FeaturePyramidBackbone):
    """A `keras_conmim.ViT` as a KerasHub `FeaturePyramidBackbone`.

    Input: float images `[B, H, W, C]` in 0..255 (normalised inside, as in
    pre-training). Output: the last token grid `[B, H/p, W/p, D]` (after the
    final norm, CLS dropped), which `keras_hub.models.ImageClassifier`
    average-pools like the fine-tuning recipe. `pyramid_outputs`: levels
    `P{min_level}` .. `P{max_level}` at true strides `2**n` (ViTDet's simple
    pyramid, `keras_conmim.downstream.pyramid`; parameter-free unless
    `pyramid_channels` is given: then every weight is the encoder's and the
    heads bring their own FPN / projections).

    Args:
        encoder: `ViT`; its patch size must be a power of two.
        image_shape: tuple or None. Run the encoder at this size (position
            tables are resampled, see `keras_conmim.models.resize`). None: the
            encoder's own size.
        min_level, max_level: int. Pyramid levels (default 2..5: strides 4..32).
        pyramid_channels: None, int or list of ints (one per level). None:
            the parameter-free pyramid, `D` channels per level. Otherwise
            each level gets ViTDet's learned projection (conv 1x1 + LayerNorm
            + conv 3x3 + LayerNorm) to that many channels; KerasHub's
            `SegFormerBackbone` needs a different width per level (it names
            its layers by width).
        level_naming: `"stride"` (KerasHub's convention, `Pn` at stride
            `2**n`; RetinaNet and DeepLabV3 read this) or `"mit"` (finest
            level called `P1`, as KerasHub's `SegFormerBackbone` expects
            from its MiT encoder).
        mean, std: normalisation (None: as `PairedViews`).
    """

    def __init__(self, encoder, image_shape=None, min_level=2, max_level=5,
                 pyramid_channels=None, level_naming="stride", mean=None, std=None,
                 dtype=None, **kwargs):
        if level_naming not in LEVEL_NAMINGS:
            raise ValueError(f"level_naming must be one of {LEVEL_NAMINGS}, received {level_naming!r}.")
        graph = build_pyramid(encoder, image_shape, min_level, max_level, pyramid_channels,
                              mean, std)
        super().__init__(inputs=graph.images, outputs=graph.grid, dtype=dtype, **kwargs)

        # === Config ===
        self._keep_pyramid(graph, min_level, max_level, mean, std)
        self.level_naming = level_naming
        offset = min_level - 1 if level_naming == "mit" else 0
        self.pyramid_outputs = {f"P{n - offset}": t for n, t in graph.levels.items()}
        # SegFormerBackbone reads the width of each level from here.
        self.hidden_dims = graph.channels

    def get_config(self):
        config = super().get_config()
        config.update(self._pyramid_config(), level_naming=self.level_naming)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config_with_layers(config, ("encoder",)))


@keras.saving.register_keras_serializable(package=PACKAGE)
class ViTPyramidImageClassifier(keras_hub.models.ImageClassifier):
    """KerasHub's `ImageClassifier` task on a `ViTPyramidBackbone`:
    average-pooled last token grid, then a dense head; KerasHub's compile
    defaults, `predict`, `save_to_preset` / `from_preset`.

        classifier = ViTPyramidImageClassifier(
            backbone=ViTPyramidBackbone(encoder), num_classes=10)
    """

    backbone_cls = ViTPyramidBackbone

    def __init__(self, backbone, num_classes, pooling="avg", **kwargs):
        super().__init__(backbone=backbone, num_classes=num_classes, pooling=pooling, **kwargs)


def to_keras_hub_vit(encoder):
    """The same network as KerasHub's own `ViTBackbone` (identical outputs:
    all tokens after the final LayerNorm, CLS first), so
    `keras_hub.models.ViTImageClassifier` and KerasHub's ViT tooling work.

    Needs an encoder with learned absolute position embeddings (KerasHub's
    ViT has no relative position bias) and the final norm. LayerScale is
    folded into the output projections and the missing key bias is zero, so
    nothing changes numerically. Input: normalised images, like `ViT`.
    """
    if encoder.position_embedding != "absolute":
        raise ValueError(
            f"This encoder uses {encoder.position_embedding!r} position embeddings; KerasHub's "
            "ViTBackbone only has learned absolute ones. Pre-train with "
            "position_embedding='absolute' (recipes/pretrain.py --position-embedding absolute), "
            "or use ViTPyramidBackbone, which keeps any position scheme.")
    if not encoder.use_final_norm:
        raise ValueError("KerasHub's ViTBackbone always applies a final LayerNorm; this encoder "
                         "was built with use_final_norm=False.")
    d, heads = encoder.hidden_dim, encoder.num_heads
    hub = keras_hub.models.ViTBackbone(
        image_shape=encoder.image_shape, patch_size=encoder.patch_size,
        num_layers=encoder.num_layers, num_heads=heads, hidden_dim=d,
        mlp_dim=encoder.mlp_dim, layer_norm_epsilon=encoder.layer_norm_epsilon)
    np_ = keras.ops.convert_to_numpy
    embed = hub.get_layer("vit_patching_and_embedding")
    embed.class_token.assign(np_(encoder.cls_token))
    embed.patch_embedding.kernel.assign(np_(encoder.patch_embedding.conv.kernel))
    embed.patch_embedding.bias.assign(np_(encoder.patch_embedding.conv.bias))
    embed.position_embedding.embeddings.assign(np_(encoder.pos_embed)[0])
    hub_encoder = hub.get_layer("vit_encoder")
    for block, hub_block in zip(encoder.blocks, hub_encoder.encoder_layers):
        if encoder.layer_scale_init_value is not None:
            gamma_1, gamma_2 = np_(block.gamma_1), np_(block.gamma_2)
        else:
            gamma_1 = gamma_2 = np.ones((d,), "float32")
        attn = block.attn
        qkv = np_(attn.qkv_kernel)
        q, k, v = (qkv[:, i * d:(i + 1) * d].reshape(d, heads, d // heads) for i in range(3))
        mha = hub_block.mha
        mha.query_dense.kernel.assign(q)
        mha.query_dense.bias.assign(np_(attn.q_bias).reshape(heads, -1))
        mha.key_dense.kernel.assign(k)
        mha.key_dense.bias.assign(np.zeros((heads, d // heads), "float32"))
        mha.value_dense.kernel.assign(v)
        mha.value_dense.bias.assign(np_(attn.v_bias).reshape(heads, -1))
        mha.output_dense.kernel.assign((np_(attn.proj_kernel) * gamma_1).reshape(heads, -1, d))
        mha.output_dense.bias.assign(np_(attn.proj_bias) * gamma_1)
        for ours, theirs in ((block.norm1, hub_block.layer_norm_1),
                             (block.norm2, hub_block.layer_norm_2)):
            theirs.gamma.assign(np_(ours.gamma))
            theirs.beta.assign(np_(ours.beta))
        mlp = hub_block.mlp
        mlp.dense_1.kernel.assign(np_(block.fc1.kernel))
        mlp.dense_1.bias.assign(np_(block.fc1.bias))
        mlp.dense_2.kernel.assign(np_(block.fc2.kernel) * gamma_2)
        mlp.dense_2.bias.assign(np_(block.fc2.bias) * gamma_2)
    hub_encoder.layer_norm.gamma.assign(np_(encoder.norm.gamma))
    hub_encoder.layer_norm.beta.assign(np_(encoder.norm.beta))
    return hub
