"""Segmentation and detection metrics for the downstream recipes (numpy).

`mean_iou`: per-class intersection over union of label maps, averaged over
the classes that occur (in the truth or the prediction).
`coco_map`: COCO-style box mAP: AP per class from the score-ranked
detections (greedy matching to the highest-IoU unmatched truth box,
101-point interpolated precision), averaged over classes and over IoU
thresholds 0.50:0.05:0.95; also AP at IoU 0.5. Boxes are `(y0, x0, y1, x1)`.
"""

import numpy as np

COCO_IOU_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)


IGNORE = 255  # a truth pixel of this value counts for no class (COCO crowd, padding, VOC edges)


def mean_iou(predicted, true, num_classes, ignore=IGNORE):
    """mIoU of integer label maps of any (equal) shape; truth pixels equal
    to `ignore` are left out."""
    predicted = np.asarray(predicted).reshape(-1)
    true = np.asarray(true).reshape(-1)
    if predicted.shape != true.shape:
        raise ValueError(f"shapes differ: {predicted.shape} vs {true.shape}")
    keep = true != ignore
    predicted, true = predicted[keep], true[keep]
    confusion = np.bincount(true * num_classes + predicted,
                            minlength=num_classes**2).reshape(num_classes, num_classes)
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    return float(np.mean(intersection[present] / union[present]))


def box_iou(a, b):
    """IoU matrix `[len(a), len(b)]` of yxyx boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    y0 = np.maximum(a[:, None, 0], b[None, :, 0])
    x0 = np.maximum(a[:, None, 1], b[None, :, 1])
    y1 = np.minimum(a[:, None, 2], b[None, :, 2])
    x1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(y1 - y0, 0, None) * np.clip(x1 - x0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _average_precision(detections, truths, threshold, crowds=None):
    """detections: list of (image, score, box); truths: {image: boxes};
    crowds: {image: crowd boxes} (a detection that matches no truth box but
    covers a crowd region is ignored, as COCO evaluation does)."""
    total = sum(len(b) for b in truths.values())
    if total == 0:
        return None
    detections = sorted(detections, key=lambda d: -d[1])
    used = {image: np.zeros(len(b), bool) for image, b in truths.items()}
    hits = np.zeros(len(detections))
    counted = np.ones(len(detections), bool)
    for i, (image, _, box) in enumerate(detections):
        gt = truths.get(image)
        if gt is not None and len(gt):
            ious = box_iou(box, gt)[0]
            ious[used[image]] = -1
            best = int(np.argmax(ious))
            if ious[best] >= threshold:
                used[image][best] = True
                hits[i] = 1
                continue
        crowd = None if crowds is None else crowds.get(image)
        if crowd is not None and len(crowd) and crowd_overlap(box, crowd).max() >= threshold:
            counted[i] = False
    hits = hits[counted]
    tp = np.cumsum(hits)
    recall = tp / total
    precision = tp / np.arange(1, len(hits) + 1)
    # precision envelope, sampled at 101 recall points (COCO)
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    ap = 0.0
    for r in np.linspace(0, 1, 101):
        above = np.nonzero(recall >= r)[0]
        ap += precision[above[0]] if len(above) else 0.0
    return ap / 101


def crowd_overlap(box, crowd):
    """COCO's IoU against crowd regions: the intersection over the
    detection's own area. `[len(crowd)]`."""
    box = np.asarray(box, np.float64).reshape(4)
    crowd = np.asarray(crowd, np.float64).reshape(-1, 4)
    inter = (np.clip(np.minimum(box[2], crowd[:, 2]) - np.maximum(box[0], crowd[:, 0]), 0, None)
             * np.clip(np.minimum(box[3], crowd[:, 3]) - np.maximum(box[1], crowd[:, 1]), 0, None))
    area = (box[2] - box[0]) * (box[3] - box[1])
    return inter / max(area, 1e-12)


def coco_map(pred_boxes, pred_scores, pred_classes, true_boxes, true_classes,
             crowd_boxes=None, crowd_classes=None):
    """COCO mAP@[.5:.95] and AP50 over a set of images.

    Args (one entry per image; padding rows with class < 0 are ignored):
        pred_boxes: `[n, D, 4]`; pred_scores: `[n, D]`; pred_classes: `[n, D]`.
        true_boxes: `[n, G, 4]`; true_classes: `[n, G]`.
        crowd_boxes, crowd_classes: optional `[n, C, 4]` / `[n, C]`: COCO's
            `iscrowd` regions. A detection that matches no box of its class
            but covers a crowd region of it (intersection over the
            detection's area >= the threshold) is neither a hit nor a miss.
    Returns `{"map": float, "ap50": float}` (0..1); equal to pycocotools'
    `COCOeval` bbox AP / AP50 (tests/test_data_formats.py checks it).
    """
    classes = sorted({int(c) for row in true_classes for c in np.asarray(row) if c >= 0})
    if not classes:
        raise ValueError("no ground-truth boxes: mAP is undefined")
    per_class = []  # [class][threshold]; a class without truth boxes has no AP
    for k in classes:
        truths = {i: np.asarray(b)[np.asarray(c) == k]
                  for i, (b, c) in enumerate(zip(true_boxes, true_classes))}
        crowds = None if crowd_boxes is None else {
            i: np.asarray(b)[np.asarray(c) == k]
            for i, (b, c) in enumerate(zip(crowd_boxes, crowd_classes))}
        detections = [(i, float(s), np.asarray(b))
                      for i, (bs, ss, cs) in enumerate(zip(pred_boxes, pred_scores, pred_classes))
                      for b, s, c in zip(bs, ss, cs) if int(c) == k]
        aps = [_average_precision(detections, truths, t, crowds) for t in COCO_IOU_THRESHOLDS]
        if aps[0] is not None:
            per_class.append(aps)
    per_threshold = np.mean(per_class, axis=0)
    return {"map": float(np.mean(per_threshold)), "ap50": float(per_threshold[0])}
