"""Image sources for pre-training: uint8 batches at a fixed size.

    from keras_conmim import data
    source = data.from_directory("photos/", image_size=64)
    ds = source.dataset(batch_size=64, seed=0)      # tf.data, or PyDataset without TF
    model.fit(ds, steps_per_epoch=source.steps_per_epoch(64), epochs=10)
"""

from keras_conmim.data.idx import read_idx
from keras_conmim.data.images import CHANNEL_POLICIES, RESIZE_POLICIES
from keras_conmim.data.sources import (
    FASHION_MNIST_CLASSES, ImageSource, class_balanced_indices, from_arrays, from_directory, from_idx, from_tfds,
    load_default, load_default_data, load_splits, parse_data_spec,
)

__all__ = [
    "CHANNEL_POLICIES", "FASHION_MNIST_CLASSES", "ImageSource", "RESIZE_POLICIES", "class_balanced_indices",
    "from_arrays", "from_directory", "from_idx", "from_tfds", "load_default",
    "load_default_data", "load_splits", "parse_data_spec", "read_idx",
]
