"""Architecture presets, as data. No weights: ConMIM's authors published none.

Each entry holds the `ViT` arguments (`config`), the projection head that fits
that width (`projector`), and a one-line description. Code never branches on
a preset's name; it only reads these dicts.
"""

PRESETS = {
    # Small-image presets for CPU work and tests (28-64 px).
    "vit_mini_p4_28": {
        "description": "28 px grayscale (Fashion-MNIST), patch 4, width 128, "
        "6 layers, 4 heads. The CPU default.",
        "config": dict(image_shape=(28, 28, 1), patch_size=4, num_layers=6,
                       num_heads=4, hidden_dim=128, mlp_dim=512),
        "projector": dict(hidden_dim=512, output_dim=128),
    },
    "vit_tiny_p4_32": {
        "description": "32 px RGB (CIFAR-size), patch 4, ViT-Tiny width 192, "
        "6 layers, 3 heads.",
        "config": dict(image_shape=(32, 32, 3), patch_size=4, num_layers=6,
                       num_heads=3, hidden_dim=192, mlp_dim=768),
        "projector": dict(hidden_dim=1024, output_dim=256),
    },
    "vit_small_p8_64": {
        "description": "64 px RGB, patch 8, ViT-Small width 384, 12 layers, "
        "6 heads.",
        "config": dict(image_shape=(64, 64, 3), patch_size=8, num_layers=12,
                       num_heads=6, hidden_dim=384, mlp_dim=1536),
        "projector": dict(hidden_dim=2048, output_dim=256),
    },
    # The paper's sizes at 224/16 (Tiny is the usual smallest ViT).
    "vit_tiny_p16_224": {
        "description": "ViT-Tiny/16 at 224 px: 192 wide, 12 layers, 3 heads.",
        "config": dict(image_shape=(224, 224, 3), patch_size=16, num_layers=12,
                       num_heads=3, hidden_dim=192, mlp_dim=768),
        "projector": dict(hidden_dim=4096, output_dim=256),
    },
    "vit_small_p16_224": {
        "description": "ViT-S/16 at 224 px: 384 wide, 12 layers, 6 heads.",
        "config": dict(image_shape=(224, 224, 3), patch_size=16, num_layers=12,
                       num_heads=6, hidden_dim=384, mlp_dim=1536),
        "projector": dict(hidden_dim=4096, output_dim=256),
    },
    "vit_base_p16_224": {
        "description": "ViT-B/16 at 224 px: 768 wide, 12 layers, 12 heads.",
        "config": dict(image_shape=(224, 224, 3), patch_size=16, num_layers=12,
                       num_heads=12, hidden_dim=768, mlp_dim=3072),
        "projector": dict(hidden_dim=4096, output_dim=256),
    },
    "vit_large_p16_224": {
        "description": "ViT-L/16 at 224 px: 1024 wide, 24 layers, 16 heads, "
        "LayerScale 1e-5 as in the release.",
        "config": dict(image_shape=(224, 224, 3), patch_size=16, num_layers=24,
                       num_heads=16, hidden_dim=1024, mlp_dim=4096,
                       layer_scale_init_value=1e-5),
        "projector": dict(hidden_dim=4096, output_dim=256),
    },
}


def get_preset(name):
    """The preset dict for `name`, or a ValueError listing the valid names."""
    if name not in PRESETS:
        raise ValueError(
            f"Unknown preset {name!r}. Valid presets: {', '.join(PRESETS)}."
        )
    return PRESETS[name]
