"""Frozen-feature evaluation: feature extraction, kNN, linear probe, and a
callback that tracks kNN accuracy during pre-training."""

import keras
import numpy as np

from keras_conmim.models.views import normalize_images


def extract_features(encoder, images, batch_size=256, pooling="mean", mean=None, std=None):
    """Pooled features `[n, D]` (float32 numpy) of uint8 `images` `[n, H, W, C]`,
    normalised as `PairedViews` does (`mean`/`std` in [0, 1] units)."""
    images = np.asarray(images)
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize_images(images[start: start + batch_size], mean, std)
        tokens = encoder(x, training=False)
        out.append(np.asarray(keras.ops.convert_to_numpy(encoder.pool(tokens, pooling)), "float32"))
    return np.concatenate(out)


def knn_predict(train_features, train_labels, features, k=20, temperature=0.07,
                num_classes=None, batch_size=512):
    """Weighted kNN (Wu et al. 2018 / DINO): cosine similarity, the k nearest
    training features vote for their label with weight `exp(sim / T)`."""
    if k < 1:
        raise ValueError(f"k must be >= 1, received {k}.")
    train = _l2(np.asarray(train_features, "float32"))
    labels = np.asarray(train_labels).astype("int64")
    num_classes = num_classes or int(labels.max()) + 1
    k = min(k, len(train))
    preds = []
    for start in range(0, len(features), batch_size):
        sims = _l2(np.asarray(features[start: start + batch_size], "float32")) @ train.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        weights = np.exp(np.take_along_axis(sims, top, axis=1) / temperature)
        votes = np.zeros((len(sims), num_classes), "float64")
        np.add.at(votes, (np.arange(len(sims))[:, None], labels[top]), weights)
        preds.append(votes.argmax(1))
    return np.concatenate(preds)


def knn_accuracy(train_features, train_labels, features, labels, **kwargs):
    """Top-1 accuracy of `knn_predict`."""
    return float(np.mean(knn_predict(train_features, train_labels, features, **kwargs) == labels))


def fit_linear_head(features, labels, num_classes, epochs=100, min_steps=0, lr=1e-2,
                    batch_size=256, weight_decay=1e-4, seed=0):
    """Logistic regression on frozen `features` [n, D], fitted on the features
    standardised with their own statistics (a BatchNorm without affine, as
    in MAE's probe), then folded back so that it applies to the raw features:
    `logits = features @ kernel + bias`. AdamW, `epochs` passes and at least
    `min_steps` steps. Returns `(kernel [D, C], bias [C], train_accuracy)`,
    the accuracy measured after training on all of `features`."""
    x = np.asarray(features, "float32")
    labels = np.asarray(labels).astype("int64")
    mu, sigma = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sigma
    batch = min(batch_size, len(z))
    epochs = max(epochs, -(-min_steps // -(-len(z) // batch)))
    keras.utils.set_random_seed(seed)
    probe = keras.Sequential([keras.Input((z.shape[1],)), keras.layers.Dense(num_classes)])
    probe.compile(optimizer=keras.optimizers.AdamW(lr, weight_decay=weight_decay),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    probe.fit(z, labels, batch_size=batch, epochs=epochs, verbose=0)
    kernel, bias = (np.asarray(w, "float32") for w in probe.layers[-1].get_weights())
    kernel, bias = kernel / sigma[:, None], bias - (mu / sigma) @ kernel
    accuracy = float(np.mean(np.argmax(x @ kernel + bias, 1) == labels))
    return kernel, bias, accuracy


PROBE_WEIGHT_DECAYS = (1e-4, 1.0, 3.0, 10.0)


def select_weight_decay(features, labels, num_classes, candidates=PROBE_WEIGHT_DECAYS, folds=4,
                        seed=0, **fit_kwargs):
    """The weight decay of `fit_linear_head` that `folds`-fold cross-validation
    on the labelled `features` picks (highest held-out accuracy, the smaller
    decay on a tie), for few labels, where a lightly regularised probe
    memorises its images (measured on Fashion-MNIST, 10 per class: picked 1,
    and the LP-FT head fitted with it fine-tunes 2.8 to 3.4 points above the
    one fitted with 1e-4; docs/finetuning.md). Folds are class-stratified and seeded.
    Returns `(weight_decay, {candidate: held-out accuracy})`."""
    labels = np.asarray(labels).astype("int64")
    if folds < 2:
        raise ValueError(f"folds must be >= 2, received {folds}.")
    if np.bincount(labels).max() < folds:
        raise ValueError(f"select_weight_decay: {folds} folds need at least {folds} images of a "
                         f"class; the largest class has {np.bincount(labels).max()}. Pass "
                         "fewer folds or a fixed weight_decay.")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), "int64")
    for c in np.unique(labels):  # each class spread evenly over the folds
        where = rng.permutation(np.flatnonzero(labels == c))
        fold[where] = np.arange(len(where)) % folds
    x = np.asarray(features, "float32")
    scores = {}
    for wd in candidates:
        hits = 0
        for k in range(folds):
            kernel, bias, _ = fit_linear_head(x[fold != k], labels[fold != k], num_classes,
                                              weight_decay=wd, seed=seed, **fit_kwargs)
            hits += int(np.sum(np.argmax(x[fold == k] @ kernel + bias, 1) == labels[fold == k]))
        scores[wd] = hits / len(labels)
    best = max(scores.values())
    return min(wd for wd, score in scores.items() if score == best), scores


def resolve_weight_decay(weight_decay, features, labels, num_classes, seed=0, **fit_kwargs):
    """A probe's weight decay: `weight_decay` itself when it is a number >= 0,
    and for `"cv"` the one `select_weight_decay` picks on the labelled
    `features` (`fit_kwargs` go to `fit_linear_head`)."""
    if isinstance(weight_decay, str):
        if weight_decay != "cv":
            raise ValueError(f"weight_decay must be 'cv' or a number >= 0, received "
                             f"{weight_decay!r}.")
        return select_weight_decay(features, labels, num_classes, seed=seed, **fit_kwargs)[0]
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be 'cv' or a number >= 0, received {weight_decay}.")
    return weight_decay


def linear_probe(train_features, train_labels, features, labels, epochs=100, lr=1e-2,
                 batch_size=256, weight_decay=1e-4, seed=0, min_steps=0):
    """Test accuracy of `fit_linear_head` fitted on the training features;
    `weight_decay="cv"`: the one `select_weight_decay` picks on them."""
    num_classes = int(max(np.max(train_labels), np.max(labels))) + 1
    fit = dict(epochs=epochs, min_steps=min_steps, lr=lr, batch_size=batch_size)
    weight_decay = resolve_weight_decay(weight_decay, train_features, train_labels, num_classes,
                                        seed=seed, **fit)
    kernel, bias, _ = fit_linear_head(train_features, train_labels, num_classes,
                                      weight_decay=weight_decay, seed=seed, **fit)
    logits = np.asarray(features, "float32") @ kernel + bias
    return float(np.mean(np.argmax(logits, 1) == np.asarray(labels)))


def _l2(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class KNNMonitor(keras.callbacks.Callback):
    """Logs `knn_accuracy` of the EMA teacher's frozen features every
    `every_n_epochs` epochs: a labeled bank (`train_images`, `train_labels`)
    votes for held-out `images` / `labels` (uint8 images).

    Put it before CSVLogger / TensorBoard so they record the value.
    """

    def __init__(self, train_images, train_labels, images, labels, k=20, temperature=0.07,
                 every_n_epochs=1, encoder="teacher_encoder"):
        super().__init__()
        self.train_images, self.train_labels = train_images, np.asarray(train_labels)
        self.images, self.labels = images, np.asarray(labels)
        self.k, self.temperature = k, temperature
        self.every_n_epochs = every_n_epochs
        self.encoder = encoder

    def evaluate(self):
        encoder = getattr(self.model, self.encoder)
        mean, std = self.model.views.mean, self.model.views.std
        bank = extract_features(encoder, self.train_images, mean=mean, std=std)
        queries = extract_features(encoder, self.images, mean=mean, std=std)
        return knn_accuracy(bank, self.train_labels, queries, self.labels, k=self.k,
                            temperature=self.temperature)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and (epoch + 1) % self.every_n_epochs == 0:
            logs["knn_accuracy"] = self.evaluate()


MIN_PROBE_STEPS = 300  # the linear probe trains at least this many steps


def probe_at_counts(train_features, train_labels, test_features, test_labels, counts, k=20,
                    temperature=0.07, epochs=100, weight_decay="auto", seed=0):
    """`{count: (linear, knn)}` top-1 of a linear probe and a kNN on the
    frozen features, trained on `count` labelled images per class
    (class-balanced, seeded; None: every image) and tested on all test
    images. `weight_decay` "auto": cross-validated with at most
    `LP_FT_MAX_PER_CLASS` labels per class, else 1e-4; "cv" or a number."""
    from keras_conmim.data.sources import class_balanced_indices
    # few labels (at most this many per class): cross-validated, as for the LP-FT head
    from keras_conmim.downstream.finetune_budget import LP_FT_MAX_PER_CLASS

    results = {}
    classes = len(np.unique(train_labels))
    for count in counts:
        index = (np.arange(len(train_labels)) if count is None
                 else class_balanced_indices(train_labels, count, seed=seed))
        knn = knn_accuracy(train_features[index], train_labels[index], test_features,
                           test_labels, k=k, temperature=temperature)
        few = len(index) <= LP_FT_MAX_PER_CLASS * classes
        decay = ("cv" if few else 1e-4) if weight_decay == "auto" else weight_decay
        linear = linear_probe(train_features[index], train_labels[index], test_features,
                              test_labels, epochs=epochs, min_steps=MIN_PROBE_STEPS,
                              weight_decay=decay, seed=seed)
        results["all" if count is None else count] = (linear, knn)
    return results
