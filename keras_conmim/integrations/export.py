"""Export encoders for serving and for downstream heads.

`.keras` keeps everything (and reloads after `import keras_conmim`); a
TensorFlow SavedModel (`format="tf_saved_model"`, JAX or TensorFlow backend)
serves without keras_conmim installed. The SavedModel's signature takes
float images `[B, H, W, C]` in the uint8 value range [0, 255] (normalised
inside, as in pre-training) and returns `patch_tokens` `[B, N, D]` and
`pooled` `[B, D]` (mean of the patch tokens). ONNX (`format="onnx"`, JAX
backend through jax2onnx or TensorFlow backend through tf2onnx) has the same
contract: input `images`, outputs `patch_tokens` and `pooled`, batch size
free. Exact GELU is kept: on TensorFlow it is written with `erf` (see
`keras_conmim.models.layers.gelu`), because `tf.nn.gelu` lowers to `Erfc`, which
ONNX has no op for.
"""

import os
import shutil

import keras

from keras_conmim.models.layers import PACKAGE, config_with_layers
from keras_conmim.atomic import make_parent, save_atomic
from keras_conmim.models.views import normalize_images
from keras_conmim.models.vit import ViT

FORMATS = ("keras", "tf_saved_model", "onnx")
ONNX_CONVERTERS = {"jax": "jax2onnx", "tensorflow": "tf2onnx"}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ServingEncoder(keras.Model):
    """`ViT` plus its input normalisation, returning named features.

    Args:
        encoder: `ViT`.
        mean, std: normalisation in [0, 1] units (None: as `PairedViews`).
        pooling: `"mean"` or `"cls"`.
    """

    def __init__(self, encoder, mean=None, std=None, pooling="mean", **kwargs):
        kwargs.setdefault("name", "serving_encoder")
        super().__init__(**kwargs)
        self.encoder = encoder
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self.pooling = pooling
        self.built = True

    def call(self, images):
        tokens = self.encoder(normalize_images(images, self.mean, self.std), training=False)
        return {"patch_tokens": tokens[:, 1:], "pooled": ViT.pool(tokens, self.pooling)}

    def get_config(self):
        config = super().get_config()
        config.update(encoder=keras.saving.serialize_keras_object(self.encoder),
                      mean=self.mean, std=self.std, pooling=self.pooling)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config_with_layers(config, ("encoder",)))


def export_encoder(encoder, path, format="keras", mean=None, std=None, pooling="mean"):
    """Write `encoder` (a `ViT`) to `path` as `.keras`, a SavedModel
    directory or an `.onnx` file; returns the path. The SavedModel needs
    TensorFlow and the JAX or TensorFlow backend; ONNX needs the JAX backend
    with jax2onnx or the TensorFlow backend with tf2onnx (`pip install
    keras-conmim[onnx]`)."""
    if format not in FORMATS:
        raise ValueError(f"Unknown format {format!r}. Valid: {', '.join(FORMATS)}.")
    model = ServingEncoder(encoder, mean=mean, std=std, pooling=pooling)
    if format == "keras":
        return save_atomic(model, path)
    backend = keras.backend.backend()
    if format == "onnx":
        return _export_onnx(model, encoder.image_shape, path)
    if backend not in ("jax", "tensorflow"):
        raise ValueError(f"SavedModel export runs on the jax or tensorflow backend, not {backend}: "
                         "save a .keras file and export it from one of those.")
    if os.path.exists(path):
        raise ValueError(f"{path} exists; pass a new directory.")
    h, w, c = encoder.image_shape
    spec = keras.InputSpec(shape=(None, h, w, c), dtype="float32")
    return _write_saved_model(path, lambda tmp: model.export(
        tmp, format="tf_saved_model", input_signature=[spec], verbose=False))


def _write_saved_model(path, write):
    """`write(folder)` a SavedModel into a temporary folder beside `path`,
    renamed onto `path` when whole (removed if it fails). Returns `path`."""
    make_parent(path)
    tmp = f"{path.rstrip(os.sep)}.{os.getpid()}.partial"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _export_onnx(model, image_shape, path):
    backend = keras.backend.backend()
    if backend not in ONNX_CONVERTERS:
        raise ValueError(f"ONNX export runs on the jax or tensorflow backend, not {backend} "
                         "(the torch exporter cannot keep the batch size free for this model): "
                         "save a .keras file and export it with KERAS_BACKEND=jax.")
    for module in ("onnx", ONNX_CONVERTERS[backend]):
        try:
            __import__(module)
        except ImportError:
            raise ImportError(f"ONNX export on the {backend} backend needs {module}: "
                              "pip install 'keras-conmim[onnx]'") from None
    import onnx

    h, w, c = image_shape
    spec = keras.InputSpec(shape=(None, h, w, c), dtype="float32")
    directory = make_parent(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp")
    try:
        model.export(tmp, format="onnx", input_signature=[spec], verbose=False)
        graph = onnx.load(tmp)
        _name_onnx_io(graph)
        onnx.checker.check_model(graph)
        onnx.save(graph, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _name_onnx_io(model):
    """Give the converters' generated names the documented ones: input
    `images`, outputs `patch_tokens` (rank 3) and `pooled` (rank 2)."""
    graph = model.graph
    old = graph.input[0].name
    for node in graph.node:
        node.input[:] = ["images" if name == old else name for name in node.input]
    graph.input[0].name = "images"
    for value in (graph.input[0], *graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    for output in graph.output:
        rank = len(output.type.tensor_type.shape.dim)
        new = {3: "patch_tokens", 2: "pooled"}[rank]
        if output.name != new:
            for node in graph.node:
                node.output[:] = [new if name == output.name else name for name in node.output]
                node.input[:] = [new if name == output.name else name for name in node.input]
            output.name = new


def export_task_model(model, task, path, batch_size=None):
    """Write a trained segmenter or detector (`recipes/segment.py`,
    `recipes/detect.py`: KerasHub / Keras-CV task models on the pyramid
    backbones) as a SavedModel whose `serve` takes uint8 images
    `[B, H, W, C]` and returns, for `task="segment"`, `masks` (int32
    `[B, H, W]`, 0 = background, k + 1 = class k); for `task="detect"`,
    `boxes` (`[B, K, 4]` yxyx pixels), `classes` (int32, -1 past the
    detections), `scores` and `num_detections`, after the model's own
    non-maximum suppression. A segmenter exports on the JAX or TensorFlow
    backend, any batch size (`batch_size` None). A detector exports on the
    TensorFlow backend only (jax2tf cannot trace KerasHub's anchor generator:
    load its `.keras` file there), and its serving function takes a fixed
    batch (default 1), because KerasHub's non-maximum suppression sizes its
    outputs by the static batch size. For `task="instance"`
    (`keras_conmim.InstanceSegmenter`): `boxes`, `classes`, `scores`,
    `num_detections` as a detector's and `masks` (uint8 `[B, K, H, W]`, 1 on
    the object), on the TensorFlow backend (JAX's top-k lowers to an op
    TensorFlow's XLA cannot read back), any batch size. Written to a temporary
    folder renamed into place. Returns `path`."""
    from keras import ops

    if task not in ("segment", "detect", "instance"):
        raise ValueError(f"task must be 'segment', 'detect' or 'instance', received {task!r}.")
    backend = keras.backend.backend()
    if backend not in ("jax", "tensorflow"):
        raise ValueError(f"SavedModel export runs on the jax or tensorflow backend, not {backend}: "
                         "save a .keras file and export it from one of those.")
    if task == "detect":
        if backend != "tensorflow":
            raise ValueError("A detector's SavedModel export runs on the tensorflow backend "
                             "(jax2tf cannot trace its anchor generator): load its .keras file "
                             "with KERAS_BACKEND=tensorflow and export there.")
        batch_size = batch_size or 1
    if task == "instance" and backend != "tensorflow":
        raise ValueError("An instance segmenter's SavedModel export runs on the tensorflow "
                         "backend (JAX's top-k lowers to an op TensorFlow cannot load): load its "
                         ".keras file with KERAS_BACKEND=tensorflow and export there.")
    if os.path.exists(path):
        raise ValueError(f"{path} exists; pass a new directory.")
    shape = tuple(model.inputs[0].shape[1:])

    if task == "segment":
        def serve(images):
            logits = model(ops.cast(images, "float32"), training=False)
            return {"masks": ops.cast(ops.argmax(logits, axis=-1), "int32")}
    elif task == "instance":
        def serve(images):
            out = model.detections(model(ops.cast(images, "float32"), training=False))
            return {"boxes": out["boxes"], "classes": out["classes"], "scores": out["scores"],
                    "masks": out["masks"], "num_detections": out["num_detections"]}
    else:
        def serve(images):
            x = ops.cast(images, "float32")
            out = model.decode_predictions(model(x, training=False), x)
            classes = out["labels"] if "labels" in out else out["classes"]
            count = ops.cast(out["num_detections"], "int32")
            valid = ops.arange(ops.shape(classes)[1])[None, :] < count[:, None]
            return {"boxes": out["boxes"],
                    "classes": ops.where(valid, ops.cast(classes, "int32"), -1),
                    "scores": ops.where(valid, out["confidence"], -1.0),
                    "num_detections": count}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve,
                         input_signature=[keras.InputSpec(shape=(batch_size, *shape),
                                                          dtype="uint8")])
    return _write_saved_model(path, lambda tmp: archive.write_out(tmp, verbose=False))
