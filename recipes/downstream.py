"""What recipes/segment.py and recipes/detect.py share: flags, the canvas
data built from Fashion-MNIST items, and the two starting points
(pre-trained encoder, or the same architecture with random weights)."""

import argparse

from keras_conmim import cli
from keras_conmim.errors import ConfigError


INITS = ("pretrained", "random")


def parser(description):
    p = argparse.ArgumentParser(description=description)
    cli.add_encoder(p, scratch=False)
    p.add_argument("--init", default="pretrained,random",
                   help="comma list of pretrained, random (same architecture, random weights)")
    cli.add_backend(p)
    cli.add_data(p)
    p.add_argument("--canvas-size", type=int, default=64,
                   help="side of the canvases; a multiple of 32 (the coarsest pyramid stride)")
    p.add_argument("--max-items", type=int, default=3)
    p.add_argument("--train-canvases", type=int, default=2000)
    p.add_argument("--test-canvases", type=int, default=500)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--steps-per-epoch", type=int, default=None, help="default: one pass")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    return p


def check(p, args):
    inits = args.init.split(",")
    bad = [i for i in inits if i not in INITS]
    if bad or not inits:
        p.error(f"--init {args.init!r}: use a comma list of {', '.join(INITS)}")
    try:
        cli.check_encoder(args)
        cli.check_at_least_one(args, ("canvas_size", "max_items", "train_canvases",
                                      "test_canvases", "epochs", "batch_size"))
    except ConfigError as e:
        p.error(str(e))
    if args.canvas_size % 32:
        p.error(f"--canvas-size {args.canvas_size}: use a multiple of 32, the coarsest pyramid "
                "stride (P5), so every level has an exact size")
    args.inits = inits
    return args


def setup(args):
    cli.use_backend(args.backend)


def canvases(args, image_shape):
    """(train, test) canvas dicts (see keras_conmim.data.canvas) and the
    number of item classes."""
    from keras_conmim import data
    from keras_conmim.data.canvas import make_canvases

    h, w, c = image_shape
    kwargs = dict(image_size=(h, w), channels="rgb" if c == 3 else "gray")
    try:
        items = data.load_splits(args.data, **kwargs)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    num_classes = int(max(s.labels.max() for s in items)) + 1
    train = make_canvases(items[0].images, items[0].labels, args.train_canvases,
                          args.canvas_size, args.max_items, seed=args.seed)
    test = make_canvases(items[1].images, items[1].labels, args.test_canvases,
                         args.canvas_size, args.max_items, seed=args.seed + 1)
    return train, test, num_classes


def encoder_for(init, args):
    """The pre-trained encoder, or a fresh one of the same architecture."""
    import keras

    from keras_conmim.loading import load_encoder
    from keras_conmim.vit import ViT

    if init == "random":
        keras.utils.set_random_seed(args.seed)
        return ViT.from_preset(args.encoder, load_weights=False)
    return load_encoder(args.encoder)


def optimizer(args, steps):
    import keras

    from keras_conmim.optimizers import warmup_cosine

    schedule = warmup_cosine(args.lr, steps, max(steps // 10, 1), 0.01 * args.lr)
    return keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay)


def prepare(args):
    """Backend set up, then (canvas image shape, train canvases, test
    canvases, number of item classes, steps per epoch)."""
    setup(args)
    probe = encoder_for("pretrained", args)
    image_shape = (args.canvas_size, args.canvas_size, probe.image_shape[2])
    train, test, num_classes = canvases(args, probe.image_shape)
    steps = args.steps_per_epoch or -(-len(train["images"]) // args.batch_size)
    return image_shape, train, test, num_classes, steps
