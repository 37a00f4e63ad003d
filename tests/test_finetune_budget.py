"""The fine-tuning recipe's scaling rules (keras_conmim.downstream.finetune_budget), the
class-balanced label subset, and recipes/finetune.py's use of both."""

import os

import keras
import numpy as np
import pytest

import keras_conmim as kc
from keras_conmim.downstream import finetune_budget as fb
from conftest import ROOT  # noqa: F401  (puts the repository on sys.path)

RELEASE = kc.PRESETS["vit_base_p16_224"]["finetune"]
SMALL = kc.PRESETS["vit_mini_p4_28"]["finetune"]


def test_a_long_run_on_many_labels_keeps_the_recipe():
    scaled, changes = fb.budget_recipe(RELEASE, num_labelled=1_281_167)
    assert scaled == RELEASE and changes == {}  # the release's own run: nothing to scale


def test_short_runs_drop_the_long_schedule_regularisers():
    one = dict(SMALL, epochs=1)
    scaled, changes = fb.budget_recipe(one, num_labelled=60_000)
    assert (scaled["mixup"], scaled["cutmix"], scaled["drop_path"]) == (0, 0, 0)
    assert (scaled["randaugment_ops"], scaled["randaugment_factor"]) == (0, 0)  # off
    assert scaled["warmup_epochs"] == 0.2  # a fifth of the run
    assert (scaled["batch_size"], scaled["lr"], scaled["epochs"]) == (64, SMALL["lr"], 1)
    assert set(changes) == {"mixup", "cutmix", "drop_path", "randaugment_ops",
                            "randaugment_factor", "warmup_epochs", "crop_padding",
                            "crop_scale_min", "flip", "crop"}
    # a magnitude set by hand keeps RandAugment on, at that magnitude
    scaled, _ = fb.budget_recipe(one, num_labelled=60_000, fixed={"randaugment_factor"})
    assert scaled["randaugment_ops"] == SMALL["randaugment_ops"] > 0
    assert scaled["randaugment_factor"] == SMALL["randaugment_factor"]
    # five all-label epochs of Fashion-MNIST (4,685 steps) are still short
    # (measured: with 0.19 of each, 3.4 to 4.1 points below none of them)
    five, _ = fb.budget_recipe(dict(SMALL, epochs=5), num_labelled=60_000)
    assert (five["mixup"], five["cutmix"], five["drop_path"], five["randaugment_ops"],
            five["flip"], five["crop"]) == (0, 0, 0, 0, 0, "none")
    # the ramp's start can be moved (recipes/finetune.py --ramp-start-steps)
    early, _ = fb.budget_recipe(dict(SMALL, epochs=5), num_labelled=60_000, ramp_start=1_000)
    assert early["mixup"] == pytest.approx(SMALL["mixup"] * (4_685 - 1_000) / (fb.LONG_STEPS - 1_000),
                                           abs=1e-4) and early["randaugment_ops"] > 0
    with pytest.raises(ValueError, match="ramp's start"):
        fb.budget_recipe(dict(SMALL, epochs=5), num_labelled=60_000, ramp_start=fb.LONG_STEPS)
    # halfway along the ramp (in optimizer steps): half the values
    mid = (fb.SHORT_STEPS + fb.LONG_STEPS) // 2
    scaled, _ = fb.budget_recipe(dict(SMALL, epochs=10), num_labelled=64 * mid // 10)
    assert scaled["mixup"] == pytest.approx(SMALL["mixup"] / 2)
    assert scaled["randaugment_factor"] == pytest.approx(SMALL["randaugment_factor"] / 2)
    assert scaled["randaugment_ops"] == SMALL["randaugment_ops"]  # on, at half magnitude
    assert fb.ramp(fb.SHORT_STEPS) == 0 and fb.ramp(fb.LONG_STEPS) == fb.ramp(10**6) == 1
    # the release's random erasing (0.25; off in the small recipe) follows the same ramp
    assert fb.budget_recipe(dict(RELEASE, epochs=1), num_labelled=60_000)[0]["random_erasing"] == 0
    scaled, changes = fb.budget_recipe(dict(RELEASE, epochs=10), num_labelled=1024 * mid // 10)
    assert scaled["random_erasing"] == pytest.approx(RELEASE["random_erasing"] / 2)
    assert changes["random_erasing"] == fb.RULES["random_erasing"] and SMALL["random_erasing"] == 0
    # a recipe dict written before random erasing existed is scaled without it
    old = {k: v for k, v in SMALL.items() if k != "random_erasing"}
    assert "random_erasing" not in fb.budget_recipe(old, num_labelled=60_000)[0]


def test_the_train_time_geometry_follows_the_ramp():
    # The release's crop + flip slow fitting: none on a short run (measured:
    # -8.2 / -9.7 points at 100 labels per class on 300 steps), the recipe's
    # from LONG_STEPS, scaled between; a value given by hand stays.
    short, changes = fb.budget_recipe(dict(SMALL, epochs=1), num_labelled=60_000)
    assert (short["crop_padding"], short["crop_scale_min"], short["flip"]) == (0, 1.0, 0.0)
    assert (short["crop"], SMALL["crop"]) == ("none", "auto")
    assert changes["crop"] == fb.RULES["crop"]
    assert changes["crop_padding"] == fb.RULES["crop_padding"]
    assert changes["crop_scale_min"] == fb.RULES["crop_scale_min"]
    mid = (fb.SHORT_STEPS + fb.LONG_STEPS) // 2
    half, _ = fb.budget_recipe(dict(RELEASE, epochs=10), num_labelled=1024 * mid // 10)
    assert half["flip"] == pytest.approx(RELEASE["flip"] / 2)
    assert half["crop_padding"] == 2  # round(4 x 0.5) whole pixels
    assert half["crop_scale_min"] == pytest.approx(1 - (1 - RELEASE["crop_scale_min"]) / 2)
    long, _ = fb.budget_recipe(dict(SMALL, epochs=400), num_labelled=60_000)
    assert (long["crop_padding"], long["crop_scale_min"], long["flip"]) == (4, 0.08, 0.5)
    kept, _ = fb.budget_recipe(dict(SMALL, epochs=1), num_labelled=60_000,
                               fixed={"crop_padding", "flip"})
    assert (kept["crop"], kept["crop_padding"], kept["flip"]) == ("auto", 4, 0.5)
    old = {k: v for k, v in SMALL.items() if k not in ("crop_padding", "crop_scale_min", "flip")}
    assert "flip" not in fb.budget_recipe(old, num_labelled=60_000)[0]


def test_few_labels_get_a_small_batch_and_enough_steps():
    scaled, changes = fb.budget_recipe(dict(SMALL, epochs=15), num_labelled=100)
    assert scaled["batch_size"] == 25 and scaled["lr"] == pytest.approx(SMALL["lr"] * 25 / 64)
    assert scaled["epochs"] == 75 and 75 * (100 // 25) >= fb.MIN_STEPS  # 300 steps
    assert scaled["mixup"] == 0  # 75 passes but 300 steps: a short run, no mixing
    assert changes["epochs"] == fb.RULES["epochs"]
    scaled, _ = fb.budget_recipe(dict(SMALL, epochs=15), num_labelled=1000)
    assert scaled["batch_size"] == 64 and scaled["epochs"] == 20  # 15 steps/epoch -> 300
    scaled, _ = fb.budget_recipe(dict(SMALL, epochs=15), num_labelled=100, min_steps=0)
    assert scaled["epochs"] == 15  # the rule off
    scaled, _ = fb.budget_recipe(dict(SMALL, epochs=1), num_labelled=100, min_steps=100,
                                 steps_per_epoch=2)
    assert scaled["epochs"] == 50  # a run of 2 steps per epoch (e.g. --steps-per-epoch)
    assert fb.budget_recipe(SMALL, num_labelled=10)[0]["batch_size"] == fb.MIN_BATCH


def test_fixed_values_are_never_scaled_and_bad_budgets_fail():
    scaled, changes = fb.budget_recipe(dict(SMALL, epochs=1), num_labelled=100,
                                       fixed={"mixup", "batch_size", "lr", "epochs"})
    assert scaled["mixup"] == SMALL["mixup"] and scaled["batch_size"] == 64
    assert scaled["lr"] == SMALL["lr"] and "mixup" not in changes
    assert scaled["epochs"] == 300  # min_steps still applies to a given epoch count
    with pytest.raises(ValueError, match="larger than the 50 labelled images"):
        fb.budget_recipe(dict(SMALL, batch_size=64), num_labelled=50, fixed={"batch_size"})
    with pytest.raises(ValueError, match="num_labelled"):
        fb.budget_recipe(SMALL, num_labelled=0)
    with pytest.raises(ValueError, match="min_steps"):
        fb.budget_recipe(SMALL, num_labelled=100, min_steps=-1)


def test_the_recipe_moves_the_ramp_start_by_flag_and_refuses_a_bad_one(capsys):
    from recipes import finetune

    argv = ["--from-scratch", "--preset", "vit_mini_p4_28", "--epochs", "5"]
    default = finetune.parse_args(argv)
    recipe, _, _ = finetune.recipe_of(default, "vit_mini_p4_28", 60_000)  # 4,685 steps: under
    assert (recipe.mixup, recipe.randaugment_ops, recipe.crop) == (0, 0, "none")
    early = finetune.parse_args([*argv, "--ramp-start-steps", "1000"])
    recipe, _, text = finetune.recipe_of(early, "vit_mini_p4_28", 60_000)
    assert recipe.mixup == pytest.approx(0.1552) and recipe.randaugment_ops == 2
    assert "mixup                0.1552   <- scaled" in text
    for bad in ("-1", str(fb.LONG_STEPS)):
        with pytest.raises(SystemExit):
            finetune.parse_args([*argv, "--ramp-start-steps", bad])
        err = capsys.readouterr().err
        assert (f"--ramp-start-steps {bad}: the ramp's start must be >= 0 and below LONG_STEPS "
                f"({fb.LONG_STEPS}) steps, received {bad}.") in err


def test_label_subset_is_class_balanced_seeded_and_reproducible():
    labels = np.repeat(np.arange(10), 40)[np.random.default_rng(3).permutation(400)]
    a = kc.data.class_balanced_indices(labels, 7, seed=0)
    assert np.array_equal(a, kc.data.class_balanced_indices(labels, 7, seed=0))
    assert not np.array_equal(a, kc.data.class_balanced_indices(labels, 7, seed=1))
    assert len(np.unique(a)) == 70 and np.all(np.bincount(labels[a]) == 7)
    # a larger subset is drawn afresh, not a superset by accident of the seed stream
    assert np.all(np.bincount(labels[kc.data.class_balanced_indices(labels, 40)]) == 40)
    with pytest.raises(ValueError, match=r"class\(es\) 3 \(5 images\).*at most 5 per class"):
        kc.data.class_balanced_indices(np.concatenate([labels[labels != 3], [3] * 5]), 6)
    source = kc.data.load_default("train")
    subset = source.labelled_subset(10, seed=0)
    assert len(subset) == 100 and np.all(np.bincount(subset.labels) == 10)
    index = kc.data.class_balanced_indices(source.labels, 10, seed=0)
    np.testing.assert_array_equal(subset.images, source.images[index])
    with pytest.raises(ValueError, match="no labels"):
        kc.data.from_arrays(source.images[:4]).labelled_subset(1)


@pytest.mark.skipif(keras.backend.backend() != "torch",
                    reason="recipe plumbing (which images, which recipe values); the model "
                    "computation is the same on every backend and tested there. Run once, on torch")
def test_finetune_recipe_on_a_labelled_subset(tmp_path, capsys):
    from recipes import finetune

    out = os.path.join(tmp_path, "cls")
    argv = ["--backend", "torch", "--from-scratch", "--preset", "vit_mini_p4_28",
            "--labels-per-class", "8", "--epochs", "1", "--output", out]
    finetune.main([*argv, "--min-steps", "3"])
    text = capsys.readouterr().out
    assert "train=80 (8 per class)" in text and "steps/epoch=4" in text  # batch 80 // 4 = 20
    assert "batch_size           20   <- scaled" in text and "epochs=1 " in text
    assert "layer_decay          1.0\n" in text  # the from-scratch recipe
    from keras_conmim.errors import ConfigError

    with pytest.raises(ConfigError, match="at most 400 per class"):
        finetune.main([*argv[:-2], "--labels-per-class", "401", "--output", out])


def test_auto_head_is_lp_ft_for_a_pretrained_encoder_with_few_labels_only():
    assert fb.head_init(True, num_labelled=100, num_classes=10) == "probe"
    assert fb.head_init(True, num_labelled=10 * fb.LP_FT_MAX_PER_CLASS, num_classes=10) == "probe"
    assert fb.head_init(True, num_labelled=60_000, num_classes=10) == "small"
    assert fb.head_init(False, num_labelled=100, num_classes=10) == "small"  # from scratch
    # the flatten head starts small (measured: LP-FT gave it nothing at 10 per class and
    # cost 2 points at 100)
    assert fb.head_init(True, num_labelled=100, num_classes=10, pooling="flatten") == "small"
    assert fb.head_init(True, num_labelled=100, num_classes=10, pooling="mean+flatten") == "small"
    assert fb.head_init(True, num_labelled=100, num_classes=10, pooling="cls") == "probe"


def test_lp_ft_head_starts_at_the_linear_probe():
    from keras_conmim.downstream import evaluation
    from keras_conmim.downstream.classifier import ViTClassifier, finetune_encoder
    from conftest import tiny_vit, uint8_images

    images = uint8_images(64, size=16)
    labels = (images.reshape(64, -1).mean(1) > images.mean()).astype("int64")  # brightness
    model = ViTClassifier(finetune_encoder(tiny_vit()), num_classes=2)
    features = model.features(images)
    assert features.shape == (64, 16)
    train_accuracy, weight_decay = model.init_head_from_probe(
        images, labels, epochs=1, min_steps=100, lr=5e-2, weight_decay="cv",
        batch_size=8)  # 6-8 steps an epoch: the 17 fits (16 cross-validating) run 13-17
    # epochs each instead of 100: per epoch is where TF and torch spend a fit (back to back:
    # TF 141 -> 40 s, torch 59 -> 31 s, JAX 14 -> 22 s)
    assert weight_decay in evaluation.PROBE_WEIGHT_DECAYS  # picked by cross-validation
    predicted = np.argmax(keras.ops.convert_to_numpy(model(images)), 1)
    # the classifier now predicts what the probe learned on its features
    assert np.mean(predicted == labels) == pytest.approx(train_accuracy, abs=1e-6)
    assert train_accuracy > 0.6
