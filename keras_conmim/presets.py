"""Architecture presets and their recipes, as data, and the presets that
carry weights (`WEIGHTS`; ConMIM's authors published none, this package
ships one). Imports nothing: recipes read it before choosing a backend.

Each entry holds the `ViT` arguments (`config`), the projection head that fits
that width (`projector`), its pre-training recipe (`pretrain`: the values
`recipes/pretrain.py` uses unless a flag or config file overrides them), its
fine-tuning recipe (`finetune`, for a pre-trained encoder) and its
from-scratch recipe (`scratch`, the same classifier from random init), both
read by `recipes/finetune.py` and scaled to each run's length and label
count by `keras_conmim.downstream.finetune_budget`, and a one-line description. Code
never branches on a preset's name; it only reads these dicts.

The 224 px presets carry the release's numbers (spec, and the release's
README: lr 5e-4, warmup 5 epochs, cosine to 1e-5, AdamW wd 0.05, random 2x2
units at 75%, momentum 0.996 -> 1, tau 0.1, crop 0.08-1, the strong view's
ImageNet strengths; ViT-L: lr 7.5e-4, warmup 10, clip 1.0). The small-image
recipes were chosen by measurement on Fashion-MNIST (docs/pretraining.md,
"Recipes per preset"; docs/benchmarks.md).
"""

# PairedViews arguments of the strong teacher view of docs/method.md (its defaults).
IMAGENET_VIEWS = dict(jitter_prob=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
                      grayscale_prob=0.2, blur_prob=0.1, blur_sigma=(0.1, 2.0), solarize_prob=0.2)
# The calibration (docs/benchmarks.md, the release's setting) on 28-32 px grayscale: no colour terms, lighter blur.
# Normalisation stays the package's one contract (ImageNet mean / std, their
# channel average for gray; `normalize_images`), which every probe, fine-tune
# and export of the encoder assumes; the calibration's Fashion-MNIST mean /
# std (0.286 / 0.353) is an affine change of the input the patch embedding
# absorbs.
FASHION_MNIST_VIEWS = dict(jitter_prob=0.8, brightness=0.4, contrast=0.4, saturation=0.0, hue=0.0,
                           grayscale_prob=0.0, blur_prob=0.1, blur_sigma=(0.1, 1.0),
                           solarize_prob=0.2)


def release_recipe(epochs, lr=5e-4, warmup_epochs=5, clip_norm=None):
    """The release's ImageNet pre-training recipe (224 px, patch 16).

    The global batch is 2048 (the release's ViT-L command: 64 per device on
    32 GPUs; docs/method.md gives 64 per device for the others and BEiT, which the
    release builds on, used 2048)."""
    return dict(epochs=epochs, batch_size=2048, lr=lr, min_lr=1e-5, warmup_epochs=warmup_epochs,
                weight_decay=0.05, clip_norm=clip_norm, mask="random", mask_ratio=0.75,
                mask_unit=2, mask_token_position="none", temperature=0.1, base_momentum=0.996,
                final_momentum=1.0, crop_scale_min=0.08, resize="crop", views=dict(IMAGENET_VIEWS))


# The release's fine-tuning geometry (its datasets.py, timm's transforms):
# "auto" is a random resized crop (area 0.08-1) + flip above 32 px and a
# random crop of the image zero-padded by 4 px + flip at 32 px or less;
# test images above 32 px are center-cropped at 0.875 (keras_conmim.data.geometry).
RELEASE_GEOMETRY = dict(crop="auto", crop_padding=4, crop_scale_min=0.08, flip=0.5)


def release_finetune():
    """The release's ImageNet fine-tuning command (ViT-B, its README; the only
    size it publishes): 100 epochs, batch 1024, lr 4e-3, warmup 20, layer
    decay 0.65, drop path 0.1, wd 0.05, MixUp 0.8, CutMix 1.0, label
    smoothing 0.1, RandAugment m9 (two ops, magnitude 0.9), random erasing
    0.25."""
    return dict(epochs=100, batch_size=1024, lr=4e-3, min_lr=1e-6, warmup_epochs=20,
                weight_decay=0.05, layer_decay=0.65, drop_path=0.1, label_smoothing=0.1,
                mixup=0.8, cutmix=1.0, randaugment_ops=2, randaugment_factor=0.9,
                random_erasing=0.25, pooling="mean", **RELEASE_GEOMETRY)


def deit_recipe():
    """Training a ViT from random init on ImageNet: DeiT's recipe (the one the
    MIM papers compare against): 300 epochs, batch 1024, lr 5e-4 x 1024 / 512,
    warmup 5, wd 0.05, drop path 0.1, MixUp 0.8, CutMix 1.0, label smoothing
    0.1, RandAugment m9, random erasing 0.25; no layer decay (nothing
    pre-trained to keep)."""
    return dict(epochs=300, batch_size=1024, lr=1e-3, min_lr=1e-5, warmup_epochs=5,
                weight_decay=0.05, layer_decay=1.0, drop_path=0.1, label_smoothing=0.1,
                mixup=0.8, cutmix=1.0, randaugment_ops=2, randaugment_factor=0.9,
                random_erasing=0.25, pooling="mean", **RELEASE_GEOMETRY)


# Small images: the release's recipe scaled down to minutes, without its layer
# decay. Measured on Fashion-MNIST with a 6-epoch ConMIM teacher (docs/benchmarks.md's
# benchmark): 1.0 instead of the release's 0.65 gives 86.70 vs 84.22 after 15
# all-label epochs (scratch: 86.60), 78.97 vs 78.79 after one, 50.21 vs 48.45
# with 10 labels per class and 69.76 vs 70.30 with 100. The release's 0.65
# protects lower layers that 800 ImageNet epochs made worth protecting; a
# short small-image pre-training does not (pass --layer-decay 0.65 for an
# encoder pre-trained long).
SMALL_IMAGE_FINETUNE = dict(
    epochs=10, batch_size=64, lr=1e-3, min_lr=1e-6, warmup_epochs=1.0, weight_decay=0.05,
    layer_decay=1.0, drop_path=0.1, label_smoothing=0.1, mixup=0.8, cutmix=1.0,
    randaugment_ops=2, randaugment_factor=0.5,
    random_erasing=0.0,  # the release's 0.25 not measured on small images: off
    pooling="mean", **RELEASE_GEOMETRY)
# What a fine-tuning recipe's `pooling` may name (`ViT.pool`): here, not in
# vit.py, so that the recipes can offer them without importing keras.
POOLINGS = ("mean", "cls", "flatten", "mean+flatten")
# From random init: the same (no layer decay: it would hold an untrained patch
# embedding at 0.65^7 = 5% of the lr). Only the head's start differs
# (finetune_budget.head_init).
SMALL_IMAGE_SCRATCH = dict(SMALL_IMAGE_FINETUNE)
# Fashion-MNIST (28 px, items centred and aligned): the head sees the patch
# tokens flattened in grid order, not their mean. Mean pooling of a ViT without
# absolute position embedding keeps what the patches are but not where, and on
# aligned data where the ink is tells the class (raw pixels win by it).
# Measured (bench/finetune_sweep.py, seed 0, the 6-epoch ConMIM teacher /
# random init, top-1 % with flatten vs mean): 10 labels per class 63.86 vs
# 50.21 / 65.70 vs 37.86, 100 per class 77.38 vs 69.76 / 78.44 vs 59.05, all
# labels for one epoch 88.65 vs 78.97 / 87.18 vs 78.31. Photos are not
# aligned: the other presets keep the release's mean.
FASHION_MNIST_FINETUNE = dict(SMALL_IMAGE_FINETUNE, pooling="flatten")
FASHION_MNIST_SCRATCH = dict(SMALL_IMAGE_SCRATCH, pooling="flatten")

# Downstream recipes (recipes/segment.py, recipes/detect.py; read by
# keras_conmim.runs.downstream) on the package's canvases of Fashion-MNIST items:
# ViTDet's practice at a CPU budget. The budget is a number of optimizer steps,
# the same at every labelled-set size (equal compute per row); AdamW with warmup
# + cosine; the heads, fresh, learn at `lr`, the pre-trained encoder at
# `backbone_lr_scale` of it with layer-wise decay (the top block x1, each block
# below x `layer_decay`), drop path on the encoder, gradients clipped. A start
# without pre-training (random init, the ResNet baseline) gets the "scratch"
# changes: every weight at the full rate, no decay by depth, no drop path.
# Canvases: 48 px (12 x 12 tokens at patch 4; 64 px costs 2.3x per image on the
# CPU), 1-2 items.
DOWNSTREAM_RECIPE = dict(steps=1000, batch_size=32, lr=1e-3, backbone_lr_scale=0.2,
                         layer_decay=0.75, min_lr=1e-6, warmup_fraction=0.1,
                         weight_decay=0.05, clip_norm=1.0, drop_path=0.1, flip=0.5,
                         canvas_size=48, max_items=2)
DOWNSTREAM = {"segment": DOWNSTREAM_RECIPE, "detect": DOWNSTREAM_RECIPE,
              "instance": DOWNSTREAM_RECIPE,
              "scratch": dict(backbone_lr_scale=1.0, layer_decay=1.0, drop_path=0.0)}

# The calibration setting (docs/benchmarks.md) (the release's model and loss on
# Fashion-MNIST padded to 32 px): the reference the package is measured against.
RELEASE_CALIBRATION_RECIPE = dict(
    epochs=3, batch_size=128, lr=5e-4, min_lr=1e-5, warmup_epochs=0.5, weight_decay=0.05,
    clip_norm=None, mask="random", mask_ratio=0.75, mask_unit=2, mask_token_position="none",
    temperature=0.1, base_momentum=0.996, final_momentum=1.0, crop_scale_min=0.35,
    resize="center", views=dict(FASHION_MNIST_VIEWS))

# Small images, short runs (minutes to hours on a CPU): the calibration's
# recipe with what `bench/short_run.py` measured to make a 4-epoch run on the
# packaged 4,000 images learn (docs/benchmarks.md, "Short runs"):
# a position code on the mask tokens, batch 32 (more steps for the same
# images), a milder crop (0.8-1: 28 px crops to 35% are a blur) and momentum
# 0.99 -> 1 (0.996 over a few hundred steps leaves the teacher near its init).
# Mask units stay the release's 2x2 (on a 7x7 grid the edge units are cut):
# single patches make a higher lookup accuracy on the short run, but on the
# full 60,000 images for 6 epochs 2x2 units fine-tune better (docs/benchmarks.md,
# "Harder masking").
SMALL_IMAGE_RECIPE = dict(
    RELEASE_CALIBRATION_RECIPE, epochs=4, batch_size=32, mask_token_position="sincos",
    crop_scale_min=0.8, base_momentum=0.99, resize="crop")


# Scenes (a few items on a larger canvas, mostly background): the shipped
# backbone's settings (batch 128, warmup half an epoch, 2x2 mask units) with
# the small-image crop; the length is the one measured in docs/downstream.md
# ("Pre-training on the task's images").
TASK_IMAGE_RECIPE = dict(SMALL_IMAGE_RECIPE, epochs=2, batch_size=128, warmup_epochs=0.5)


# The mini ViT of the grayscale presets (28 px items, 48 px scenes, the 32 px
# calibration): one architecture, its projector and its downstream recipes.
MINI = dict(patch_size=4, num_layers=6, num_heads=4, hidden_dim=128, mlp_dim=512)
MINI_HEADS_AND_RECIPES = {"projector": dict(hidden_dim=512, output_dim=128),
                          "finetune": FASHION_MNIST_FINETUNE, "scratch": FASHION_MNIST_SCRATCH,
                          "downstream": DOWNSTREAM}


PRESETS = {
    # Small-image presets for CPU work and tests (28-64 px).
    "vit_mini_p4_28": {
        "description": "28 px grayscale (Fashion-MNIST), patch 4, width 128, "
        "6 layers, 4 heads. The CPU default.",
        "config": dict(MINI, image_shape=(28, 28, 1)),
        "pretrain": SMALL_IMAGE_RECIPE,
        **MINI_HEADS_AND_RECIPES,
    },
    "vit_mini_p4_48": {
        "description": "48 px grayscale scenes (the downstream recipes' canvases), patch 4, "
        "width 128, 6 layers, 4 heads: vit_mini_p4_28 on a 12 x 12 grid, for pre-training "
        "on the images a detector or segmenter will see.",
        "config": dict(MINI, image_shape=(48, 48, 1)),
        "pretrain": TASK_IMAGE_RECIPE,
        **MINI_HEADS_AND_RECIPES,
    },
    "vit_mini_p4_32": {
        "description": "The calibration setting: the release's architecture on 32 px "
        "grayscale (Fashion-MNIST padded from 28), patch 4, width 128, 6 layers, "
        "4 heads, with the release-setting recipe.",
        "config": dict(MINI, image_shape=(32, 32, 1)),
        "pretrain": RELEASE_CALIBRATION_RECIPE,
        **MINI_HEADS_AND_RECIPES,
    },
    "vit_tiny_p4_32": {
        "description": "32 px RGB (CIFAR-size), patch 4, ViT-Tiny width 192, "
        "6 layers, 3 heads.",
        "config": dict(image_shape=(32, 32, 3), patch_size=4, num_layers=6,
                       num_heads=3, hidden_dim=192, mlp_dim=768),
        "projector": dict(hidden_dim=1024, output_dim=256),
        "pretrain": dict(SMALL_IMAGE_RECIPE, views=dict(IMAGENET_VIEWS)),
        "finetune": SMALL_IMAGE_FINETUNE,
        "scratch": SMALL_IMAGE_SCRATCH,
    },
    "vit_small_p8_64": {
        "description": "64 px RGB, patch 8, ViT-Small width 384, 12 layers, "
        "6 heads.",
        "config": dict(image_shape=(64, 64, 3), patch_size=8, num_layers=12,
                       num_heads=6, hidden_dim=384, mlp_dim=1536),
        "projector": dict(hidden_dim=2048, output_dim=256),
        "pretrain": dict(SMALL_IMAGE_RECIPE, views=dict(IMAGENET_VIEWS)),
        "finetune": SMALL_IMAGE_FINETUNE,
        "scratch": SMALL_IMAGE_SCRATCH,
    },
    # The paper's sizes at 224/16 (Tiny is the usual smallest ViT).
    "vit_tiny_p16_224": {
        "description": "ViT-Tiny/16 at 224 px: 192 wide, 12 layers, 3 heads.",
        "config": dict(image_shape=(224, 224, 3), patch_size=16, num_layers=12,
                       num_heads=3, hidden_dim=192, mlp_dim=768),
        "projector": dict(hidden_dim=4096, output_dim=256),
        "pretrain": release_recipe(epochs=300),
        "finetune": release_finetune(),
        "scratch": deit_recipe(),
    },
    "vit_small_p16_224": {
        "description": "ViT-S/16 at 224 px: 384 wide, 12 layers, 6 heads.",
        "config": dict(image_shape=(224, 224, 3), patch_size=16, num_layers=12,
                       num_heads=6, hidden_dim=384, mlp_dim=1536),
        "projector": dict(hidden_dim=4096, output_dim=256),
        "pretrain": release_recipe(epochs=300),
        "finetune": release_finetune(),
        "scratch": deit_recipe(),
    },
    "vit_base_p16_224": {
        "description": "ViT-B/16 at 224 px: 768 wide, 12 layers, 12 heads.",
        "config": dict(image_shape=(224, 224, 3), patch_size=16, num_layers=12,
                       num_heads=12, hidden_dim=768, mlp_dim=3072),
        "projector": dict(hidden_dim=4096, output_dim=256),
        "pretrain": release_recipe(epochs=800),
        "finetune": release_finetune(),
        "scratch": deit_recipe(),
    },
    "vit_large_p16_224": {
        "description": "ViT-L/16 at 224 px: 1024 wide, 24 layers, 16 heads, "
        "LayerScale 1e-5 as in the release.",
        "config": dict(image_shape=(224, 224, 3), patch_size=16, num_layers=24,
                       num_heads=16, hidden_dim=1024, mlp_dim=4096,
                       layer_scale_init_value=1e-5),
        "projector": dict(hidden_dim=4096, output_dim=256),
        "pretrain": release_recipe(epochs=800, lr=7.5e-4, warmup_epochs=10, clip_norm=1.0),
        "finetune": release_finetune(),
        "scratch": deit_recipe(),
    },
}


# Presets that carry weights, KerasHub-style: name -> the architecture preset
# the weights fit, the `.keras` file that holds them and what they are. The
# files travel inside the package (`keras_conmim/weights/`, package data, so
# a wheel carries them); $KERAS_CONMIM_WEIGHTS names a folder searched first.
# Nothing is fetched from a hub.
WEIGHTS = {
    "conmim_vit_mini_p4_28_fmnist": dict(
        preset="vit_mini_p4_28",
        file="conmim_vit_mini_p4_28_fmnist.keras",
        description="vit_mini_p4_28 pre-trained with ConMIM on the 60,000 Fashion-MNIST "
        "training images (6 epochs, 2x2 mask units, EMA teacher; card: keras_conmim/weights/CARD.md).",
    ),
}

WEIGHTS_ENV = "KERAS_CONMIM_WEIGHTS"


def get_preset(name):
    """The preset dict for `name` (an architecture preset, or a preset with
    weights: then its architecture preset's dict), or a ValueError listing the
    valid names."""
    if name in WEIGHTS:
        return PRESETS[WEIGHTS[name]["preset"]]
    if name not in PRESETS:
        raise ValueError(
            f"Unknown preset {name!r}. Valid presets: {', '.join(list(PRESETS) + list(WEIGHTS))} "
            "(or a preset folder / .keras file path)."
        )
    return PRESETS[name]


def list_presets():
    """`{name: {"description", "architecture", "weights"}}` for every preset:
    `weights` is the weights file's name for presets that carry weights, None
    for architecture-only ones."""
    table = {name: dict(description=p["description"], architecture=name, weights=None)
             for name, p in PRESETS.items()}
    for name, w in WEIGHTS.items():
        table[name] = dict(description=w["description"], architecture=w["preset"], weights=w["file"])
    return table


def weights_path(name):
    """The local path of a weighted preset's `.keras` file: in the folder
    $KERAS_CONMIM_WEIGHTS names when it holds the file, else in the
    package's own `weights/` folder (installed with it)."""
    import os

    if name not in WEIGHTS:
        raise ValueError(f"Preset {name!r} carries no weights. Presets with weights: "
                         f"{', '.join(WEIGHTS)}.")
    file = WEIGHTS[name]["file"]
    here = os.path.dirname(os.path.abspath(__file__))
    folders = [os.environ[WEIGHTS_ENV]] if os.environ.get(WEIGHTS_ENV) else []
    folders.append(os.path.join(here, "weights"))
    for folder in folders:
        path = os.path.join(folder, file)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"Preset {name!r}: {file} is not in {' or '.join(folders)}. It ships inside the "
        f"package (keras_conmim/weights/): reinstall keras-conmim, or put the file in a folder "
        f"and set {WEIGHTS_ENV} to that folder.")
