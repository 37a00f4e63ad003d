"""Instance segmentation on a feature pyramid: boxes, classes, scores and one
mask per object, in keras ops on every backend (no torchvision, no Keras-CV).

The design is YOLACT's (Bolya et al. 2019) on an FCOS-style anchor-free
detector (Tian et al. 2019):
- an FPN over the backbone's `pyramid_outputs` (KerasHub's convention: `P{n}`
  at stride `2**n`; `keras_conmim.integrations.kerashub.ViTPyramidBackbone` or KerasHub's
  `ResNetBackbone`), one shared head over the detection levels that
  predicts per location class logits, the box as distances to its four sides,
  and `num_prototypes` mask coefficients;
- a prototype branch on the finest level, upsampled once (stride
  `2**(prototype_level - 1)`): `num_prototypes` maps whose combination by an
  object's coefficients, cropped to its box, is its mask.

Training targets (`compute_loss`, inside the compiled step): a location is
positive for an object when it lies inside the box, within `center_radius`
strides of its centre and on the object's level (the level whose range holds
half the box's longer side, FCOS's ranges), or when it is the location of
that level nearest the centre (so a small object always has one); where two
objects claim a location the smaller wins. Losses: sigmoid focal loss on the
classes (over all locations, per positive), GIoU on the boxes, and per-pixel
binary cross-entropy of each positive's mask inside its object's box (at most
`max_positives` positives per image; the truth mask average-pooled to the
prototype resolution; pixels marked 255 add nothing).

Inference (`predict` / `predict_step`): the `pre_nms` most confident
locations, YOLACT's Fast NMS per class at `iou_threshold` (parallel; a box is
dropped when a more confident box of its class overlaps it), the best
`max_detections`, and their masks at the input size (bilinear, cropped to
the box, > 0.5).

    backbone = keras_conmim.integrations.kerashub.ViTPyramidBackbone(encoder, image_shape=(48, 48, 1),
                                                        min_level=2, max_level=4)
    model = keras_conmim.InstanceSegmenter(backbone, num_classes=10)
    model.compile(optimizer="adamw")
    model.fit(images, {"boxes": boxes, "classes": classes, "instances": instance_maps})
    out = model.predict(images)  # boxes, scores, classes, masks, num_detections

Targets: `boxes` float `[B, G, 4]` yxyx pixels (padding rows -1), `classes`
int `[B, G]` (-1 padding), `instances` int `[B, H, W]`: 0 no object, `g + 1`
the object in row `g`, 255 ignore (crowd regions, letterbox padding).
"""

import math

import keras
import numpy as np
from keras import ops

from keras_conmim.downstream.metrics import IGNORE
from keras_conmim.models.layers import PACKAGE, config_with_layers

_PRIOR = 0.01  # initial class probability (RetinaNet's focal-loss prior)


def _locations(size, levels):
    """(centres `[N, 2]` yx pixels, stride `[N]`, level index `[N]`) of the
    detection levels in the order the head's outputs are concatenated."""
    centres, strides, index = [], [], []
    for i, level in enumerate(levels):
        s = 2 ** level
        n = size // s
        y, x = np.meshgrid((np.arange(n) + 0.5) * s, (np.arange(n) + 0.5) * s, indexing="ij")
        centres.append(np.stack([y.ravel(), x.ravel()], -1))
        strides.append(np.full(n * n, s, np.float32))
        index.append(np.full(n * n, i, np.int32))
    return (np.concatenate(centres).astype("float32"), np.concatenate(strides),
            np.concatenate(index))


def level_bounds(levels):
    """`[L + 1]` bounds of half an object's longer side per level (FCOS's
    ranges, 8 x stride at the top of each; the last level takes the rest)."""
    upper = [8.0 * 2 ** level for level in levels[:-1]]
    return np.array([0.0, *upper, np.inf], np.float32)


def _iou_and_union(a, b):
    """(IoU, union) of yxyx boxes `[..., 4]` broadcast against each other."""
    lo = ops.maximum(a[..., :2], b[..., :2])
    hi = ops.minimum(a[..., 2:], b[..., 2:])
    inter = ops.prod(ops.maximum(hi - lo, 0), axis=-1)
    area_a = ops.prod(ops.maximum(a[..., 2:] - a[..., :2], 0), axis=-1)
    area_b = ops.prod(ops.maximum(b[..., 2:] - b[..., :2], 0), axis=-1)
    union = area_a + area_b - inter
    return inter / ops.maximum(union, 1e-7), union


def box_giou(a, b):
    """Generalised IoU of yxyx boxes of the same shape `[..., 4]` -> `[...]`."""
    iou, union = _iou_and_union(a, b)
    hull = ops.prod(ops.maximum(ops.maximum(a[..., 2:], b[..., 2:])
                                - ops.minimum(a[..., :2], b[..., :2]), 0), axis=-1)
    return iou - (hull - union) / ops.maximum(hull, 1e-7)


def pairwise_iou(a, b):
    """IoU `[..., N, M]` of yxyx boxes `[..., N, 4]` and `[..., M, 4]`."""
    return _iou_and_union(a[..., :, None, :], b[..., None, :, :])[0]


def box_mask(boxes, side):
    """bool `[..., side, side]`: the pixels of a `side` x `side` grid whose
    centres lie in each yxyx box `[..., 4]` (in that grid's pixels)."""
    centre = ops.arange(side, dtype="float32") + 0.5
    in_y = (centre >= boxes[..., 0:1]) & (centre < boxes[..., 2:3])
    in_x = (centre >= boxes[..., 1:2]) & (centre < boxes[..., 3:4])
    return in_y[..., :, None] & in_x[..., None, :]


def fast_nms(boxes, scores, classes, iou_threshold):
    """YOLACT's Fast NMS: `keep` bool `[B, T]` for boxes sorted by falling
    score: box i is dropped when a box j < i of its class overlaps it by more
    than `iou_threshold`. Parallel (one IoU matrix), no loop."""
    t = boxes.shape[1]
    iou = pairwise_iou(boxes, boxes)
    same = ops.cast(ops.equal(classes[:, :, None], classes[:, None, :]), iou.dtype)
    before = ops.cast(np.triu(np.ones((t, t), bool), 1), iou.dtype)  # [j, i]: j < i
    worst = ops.max(iou * same * before[None], axis=1)
    return ops.logical_and(worst <= iou_threshold, scores > 0)


def _check_backbone(backbone, levels, prototype_level):
    """(its pyramid_outputs, its input shape), or ValueError naming the fix."""
    if list(levels) != sorted(set(levels)) or prototype_level > levels[0]:
        raise ValueError(f"levels {levels} must rise, from at least prototype_level "
                         f"{prototype_level}.")
    pyramid = getattr(backbone, "pyramid_outputs", None) or {}
    missing = [f"P{n}" for n in range(prototype_level, levels[-1] + 1) if f"P{n}" not in pyramid]
    if missing:
        raise ValueError(f"the backbone has no {', '.join(missing)} in its pyramid_outputs "
                         f"({', '.join(pyramid) or 'none'}); build it with those levels "
                         "(ViTPyramidBackbone(min_level=..., max_level=...)).")
    h, w, c = backbone.input_shape[1:]
    if h != w or h is None or h % 2 ** levels[-1]:
        raise ValueError(f"the backbone's input {h} x {w} must be square and a multiple of "
                         f"{2 ** levels[-1]} (the stride of P{levels[-1]}).")
    return pyramid, (h, w, c)


def _tower(name, width, depth):
    """`depth` x (3x3 conv, GroupNorm, ReLU) layers."""
    blocks = []
    for i in range(depth):
        blocks += [keras.layers.Conv2D(width, 3, padding="same", name=f"{name}_conv{i}"),
                   keras.layers.GroupNormalization(min(8, width // 8), name=f"{name}_norm{i}"),
                   keras.layers.Activation("relu", name=f"{name}_relu{i}")]
    return blocks


@keras.saving.register_keras_serializable(package=PACKAGE)
class InstanceSegmenter(keras.Model):
    """Boxes, classes, scores and a mask per object from a pyramid backbone.

    Args:
        backbone: a Keras model with `pyramid_outputs` (`{"P2": tensor, ...}`
            at strides `2**n`) and a fixed square input size divisible by
            `2**max(levels)`; images in 0..255.
        num_classes: object classes (no background class).
        levels: detection levels (default P3-P4: strides 8 and 16).
        prototype_level: the level the prototypes are made from (default P2;
            the prototypes are at twice its resolution).
        width: channels of the FPN, the head towers and the prototype branch.
        num_prototypes: prototype masks (and coefficients per location).
        head_depth: 3x3 conv + GroupNorm + ReLU blocks per head tower.
        center_radius: positives lie within this many strides of the centre.
        max_positives: positives per image whose masks train each step.
        box_weight, mask_weight: loss weights (the class loss weighs 1).
        pre_nms, max_detections, iou_threshold, confidence_threshold: inference.
    """

    def __init__(self, backbone, num_classes, levels=(3, 4), prototype_level=2, width=64,
                 num_prototypes=16, head_depth=2, center_radius=1.5, max_positives=32,
                 box_weight=2.0, mask_weight=2.0, pre_nms=100, max_detections=20,
                 iou_threshold=0.5, confidence_threshold=0.05, **kwargs):
        levels = tuple(int(n) for n in levels)
        all_levels = list(range(prototype_level, levels[-1] + 1))
        pyramid, (h, w, c) = _check_backbone(backbone, levels, prototype_level)
        # === Layers === (kept as attributes after the functional graph exists:
        # torch modules cannot be set before Module.__init__)
        feature_extractor = keras.Model(
            backbone.inputs, {f"P{n}": pyramid[f"P{n}"] for n in all_levels}, name="pyramid")
        laterals = [keras.layers.Conv2D(width, 1, name=f"lateral_p{n}") for n in all_levels]
        smooth = [keras.layers.Conv2D(width, 3, padding="same", name=f"fpn_p{n}")
                  for n in all_levels]
        class_tower = _tower("class_tower", width, head_depth)
        box_tower = _tower("box_tower", width, head_depth)
        prior = -math.log((1 - _PRIOR) / _PRIOR)
        class_out = keras.layers.Conv2D(
            num_classes, 3, padding="same", name="class_logits",
            bias_initializer=keras.initializers.Constant(prior))
        box_out = keras.layers.Conv2D(4, 3, padding="same", name="box_distances")
        coef_out = keras.layers.Conv2D(num_prototypes, 3, padding="same",
                                       name="mask_coefficients")
        proto_layers = _tower("prototype", width, head_depth) + [
            keras.layers.UpSampling2D(2, interpolation="bilinear", name="prototype_up"),
            keras.layers.Conv2D(width, 3, padding="same", activation="relu",
                                name="prototype_conv"),
            keras.layers.Conv2D(num_prototypes, 1, activation="relu", name="prototypes")]

        # === Functional model ===
        images = keras.Input(shape=(h, w, c), name="images")
        feats = feature_extractor(images)
        fpn, above = {}, None
        for i in reversed(range(len(all_levels))):
            n = all_levels[i]
            x = laterals[i](feats[f"P{n}"])
            if above is not None:
                x = x + keras.layers.UpSampling2D(2, name=f"fpn_up_p{n}")(above)
            above = x
            fpn[n] = smooth[i](x)
        outputs = {"classes": [], "boxes": [], "coefficients": []}
        for n in levels:
            cls, box = fpn[n], fpn[n]
            for layer in class_tower:
                cls = layer(cls)
            for layer in box_tower:
                box = layer(box)
            side = h // 2 ** n
            flat = keras.layers.Reshape
            outputs["classes"].append(flat((side * side, num_classes))(class_out(cls)))
            outputs["boxes"].append(flat((side * side, 4))(box_out(box)))
            outputs["coefficients"].append(flat((side * side, num_prototypes))(coef_out(box)))
        outputs = {k: keras.layers.Concatenate(axis=1, name=k)(v) if len(v) > 1 else v[0]
                   for k, v in outputs.items()}
        proto = fpn[prototype_level]
        for layer in proto_layers:
            proto = layer(proto)
        outputs["prototypes"] = proto
        super().__init__(inputs=images, outputs=outputs, **kwargs)

        self.backbone, self.feature_extractor = backbone, feature_extractor
        self.laterals, self.smooth = laterals, smooth
        self.class_tower, self.box_tower, self.proto_layers = class_tower, box_tower, proto_layers
        self.class_out, self.box_out, self.coef_out = class_out, box_out, coef_out

        # === Config ===
        self.num_classes = int(num_classes)
        self.levels = levels
        self.prototype_level = int(prototype_level)
        self.width, self.num_prototypes = int(width), int(num_prototypes)
        self.head_depth = int(head_depth)
        self.center_radius, self.max_positives = float(center_radius), int(max_positives)
        self.box_weight, self.mask_weight = float(box_weight), float(mask_weight)
        self.pre_nms, self.max_detections = int(pre_nms), int(max_detections)
        self.iou_threshold = float(iou_threshold)
        self.confidence_threshold = float(confidence_threshold)
        self.image_size = int(h)
        self._centres, self._strides, self._level_index = _locations(h, levels)

    # ---- geometry ---------------------------------------------------------
    def decode_boxes(self, distances):
        """Raw box outputs `[B, N, 4]` -> yxyx pixel boxes."""
        d = ops.softplus(distances) * ops.convert_to_tensor(self._strides)[None, :, None]
        c = ops.convert_to_tensor(self._centres)[None]
        return ops.concatenate([c - d[..., :2], c + d[..., 2:]], axis=-1)

    def assign(self, boxes, classes):
        """(positive `[B, N]` bool, the object each location takes `[B, N]`)."""
        boxes = ops.cast(ops.convert_to_tensor(boxes), "float32")
        classes = ops.cast(ops.convert_to_tensor(classes), "int32")
        centres = ops.convert_to_tensor(self._centres)
        cy, cx = centres[None, :, 0:1], centres[None, :, 1:2]
        stride = ops.convert_to_tensor(self._strides)[None, :, None]
        y0, x0, y1, x1 = (boxes[:, None, :, k] for k in range(4))  # [B, 1, G]
        valid = (classes >= 0)[:, None, :]
        inside = (cy > y0) & (cy < y1) & (cx > x0) & (cx < x1)
        gy, gx = (y0 + y1) / 2, (x0 + x1) / 2
        radius = self.center_radius * stride
        central = (ops.abs(cy - gy) < radius) & (ops.abs(cx - gx) < radius)
        half = ops.maximum(y1 - y0, x1 - x0) / 2  # [B, 1, G]
        bounds = level_bounds(self.levels)
        gt_level = ops.sum(ops.cast(half[..., None] > ops.convert_to_tensor(bounds[1:-1]),
                                    "int32"), axis=-1)
        on_level = ops.equal(ops.convert_to_tensor(self._level_index)[None, :, None], gt_level)
        distance = (cy - gy) ** 2 + (cx - gx) ** 2 + ops.where(on_level, 0.0, 1e12)
        nearest = ops.equal(ops.arange(len(self._strides), dtype="int32")[None, :, None],
                            ops.cast(ops.argmin(distance, axis=1), "int32")[:, None, :])
        claim = valid & ((inside & central & on_level) | nearest)
        area = (y1 - y0) * (x1 - x0)
        cost = ops.where(claim, area, 1e12)
        return ops.any(claim, axis=-1), ops.argmin(cost, axis=-1)

    # ---- training ---------------------------------------------------------
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        boxes = ops.cast(y["boxes"], "float32")
        classes = ops.cast(y["classes"], "int32")
        positive, which = self.assign(boxes, classes)
        pos = ops.cast(positive, "float32")
        count = ops.maximum(ops.sum(pos), 1.0)
        target_box = ops.take_along_axis(boxes, which[..., None], axis=1)  # [B, N, 4]
        # a location no object claims may point at a padding row (-1): zeroed by `pos`
        target_class = ops.maximum(ops.take_along_axis(classes, which, axis=1), 0)
        onehot = ops.one_hot(target_class, self.num_classes) * pos[..., None]

        logits = ops.cast(y_pred["classes"], "float32")
        p = ops.sigmoid(logits)
        ce = ops.binary_crossentropy(onehot, logits, from_logits=True)
        p_t = onehot * p + (1 - onehot) * (1 - p)
        alpha = onehot * 0.25 + (1 - onehot) * 0.75
        class_loss = ops.sum(alpha * (1 - p_t) ** 2 * ce) / count

        predicted = self.decode_boxes(ops.cast(y_pred["boxes"], "float32"))
        box_loss = ops.sum((1 - box_giou(predicted, target_box)) * pos) / count

        mask_loss = self._mask_loss(y, y_pred, positive, which, boxes)
        total = class_loss + self.box_weight * box_loss + self.mask_weight * mask_loss
        for loss in self.losses:
            total = total + ops.cast(loss, total.dtype)
        return total

    def _mask_loss(self, y, y_pred, positive, which, boxes):
        n = len(self._strides)
        m = min(self.max_positives, n)
        rank = ops.cast(positive, "float32") - ops.arange(n, dtype="float32")[None] / (2 * n)
        _, slots = ops.top_k(rank, m)  # the positives first, in location order
        slot_pos = ops.cast(ops.take_along_axis(positive, slots, axis=1), "float32")  # [B, M]
        slot_obj = ops.take_along_axis(which, slots, axis=1)
        coef = ops.take_along_axis(ops.cast(y_pred["coefficients"], "float32"),
                                   slots[..., None], axis=1)  # [B, M, K]
        protos = ops.cast(y_pred["prototypes"], "float32")  # [B, Hp, Wp, K]
        logits = ops.einsum("bhwk,bmk->bmhw", protos, coef)

        hp = protos.shape[1]
        factor = self.image_size // hp
        num_objects = boxes.shape[1]
        ids = ops.cast(y["instances"], "int32")[..., None]  # [B, H, W, 1]
        masks = ops.cast(ops.equal(ids, ops.arange(1, num_objects + 1)), "float32")
        ignore = ops.cast(ops.equal(ids, IGNORE), "float32")
        if factor > 1:
            masks = ops.average_pool(masks, factor, factor)
            ignore = ops.average_pool(ignore, factor, factor)
        take = ops.one_hot(slot_obj, num_objects)  # [B, M, G]
        target = ops.einsum("bmg,bhwg->bmhw", take, masks)
        slot_box = ops.take_along_axis(boxes, slot_obj[..., None], axis=1) / factor  # proto px
        crop = ops.cast(box_mask(slot_box, hp), "float32") * (1 - ignore[..., 0])[:, None]
        bce = ops.binary_crossentropy(target, logits, from_logits=True)
        per_slot = ops.sum(bce * crop, axis=(2, 3)) / ops.maximum(ops.sum(crop, axis=(2, 3)), 1.0)
        return ops.sum(per_slot * slot_pos) / ops.maximum(ops.sum(slot_pos), 1.0)

    # ---- inference --------------------------------------------------------
    def detections(self, y_pred):
        """The raw outputs -> `{"boxes" [B, D, 4] yxyx, "scores" [B, D],
        "classes" [B, D], "masks" uint8 [B, D, H, W], "num_detections" [B]}`;
        rows past a canvas's detections: score -1, class -1, box -1, mask 0."""
        scores = ops.sigmoid(ops.cast(y_pred["classes"], "float32"))
        confidence, labels = ops.max(scores, axis=-1), ops.argmax(scores, axis=-1)
        boxes = self.decode_boxes(ops.cast(y_pred["boxes"], "float32"))
        t = min(self.pre_nms, boxes.shape[1])
        top, idx = ops.top_k(confidence, t)
        boxes = ops.take_along_axis(boxes, idx[..., None], axis=1)
        labels = ops.take_along_axis(labels, idx, axis=1)
        coef = ops.take_along_axis(ops.cast(y_pred["coefficients"], "float32"),
                                   idx[..., None], axis=1)
        top = ops.where(top >= self.confidence_threshold, top, 0.0)
        keep = fast_nms(boxes, top, labels, self.iou_threshold)
        kept = ops.where(keep, top, -1.0)
        d = min(self.max_detections, t)
        score, pick = ops.top_k(kept, d)
        valid = score > 0
        boxes = ops.where(valid[..., None], ops.take_along_axis(boxes, pick[..., None], axis=1),
                          -1.0)
        labels = ops.where(valid, ops.take_along_axis(labels, pick, axis=1), -1)
        coef = ops.take_along_axis(coef, pick[..., None], axis=1)
        protos = ops.cast(y_pred["prototypes"], "float32")
        size = self.image_size
        masks = ops.sigmoid(ops.image.resize(ops.einsum("bhwk,bdk->bhwd", protos, coef),
                                             (size, size), interpolation="bilinear"))
        masks = ops.transpose(masks, (0, 3, 1, 2))  # [B, D, H, W]
        inside = box_mask(boxes, size) & valid[..., None, None]
        masks = ops.cast((masks > 0.5) & inside, "uint8")
        return {"boxes": boxes, "scores": ops.where(valid, score, -1.0),
                "classes": ops.cast(labels, "int32"), "masks": masks,
                "num_detections": ops.sum(ops.cast(valid, "int32"), axis=-1)}

    def predict_step(self, *args):
        # JAX's trainer passes (state, data) and takes (outputs, state) back.
        outputs = super().predict_step(*args)
        if isinstance(outputs, tuple):
            return self.detections(outputs[0]), outputs[1]
        return self.detections(outputs)

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "num_classes": self.num_classes, "levels": list(self.levels),
                "prototype_level": self.prototype_level, "width": self.width,
                "num_prototypes": self.num_prototypes, "head_depth": self.head_depth,
                "center_radius": self.center_radius, "max_positives": self.max_positives,
                "box_weight": self.box_weight, "mask_weight": self.mask_weight,
                "pre_nms": self.pre_nms, "max_detections": self.max_detections,
                "iou_threshold": self.iou_threshold,
                "confidence_threshold": self.confidence_threshold}

    @classmethod
    def from_config(cls, config):
        return cls(**config_with_layers(config, ("backbone",)))
