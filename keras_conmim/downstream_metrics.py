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


def mean_iou(predicted, true, num_classes):
    """mIoU of integer label maps of any (equal) shape."""
    predicted = np.asarray(predicted).reshape(-1)
    true = np.asarray(true).reshape(-1)
    if predicted.shape != true.shape:
        raise ValueError(f"shapes differ: {predicted.shape} vs {true.shape}")
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


def _average_precision(detections, truths, threshold):
    """detections: list of (image, score, box); truths: {image: boxes}."""
    total = sum(len(b) for b in truths.values())
    if total == 0:
        return None
    detections = sorted(detections, key=lambda d: -d[1])
    used = {image: np.zeros(len(b), bool) for image, b in truths.items()}
    hits = np.zeros(len(detections))
    for i, (image, _, box) in enumerate(detections):
        gt = truths.get(image)
        if gt is None or not len(gt):
            continue
        ious = box_iou(box, gt)[0]
        ious[used[image]] = -1
        best = int(np.argmax(ious))
        if ious[best] >= threshold:
            used[image][best] = True
            hits[i] = 1
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


def coco_map(pred_boxes, pred_scores, pred_classes, true_boxes, true_classes):
    """COCO mAP@[.5:.95] and AP50 over a set of images.

    Args (one entry per image; padding rows with class < 0 are ignored):
        pred_boxes: `[n, D, 4]`; pred_scores: `[n, D]`; pred_classes: `[n, D]`.
        true_boxes: `[n, G, 4]`; true_classes: `[n, G]`.
    Returns `{"map": float, "ap50": float}` (0..1).
    """
    classes = sorted({int(c) for row in true_classes for c in np.asarray(row) if c >= 0})
    if not classes:
        raise ValueError("no ground-truth boxes: mAP is undefined")
    per_threshold = []
    for threshold in COCO_IOU_THRESHOLDS:
        aps = []
        for k in classes:
            truths = {i: np.asarray(b)[np.asarray(c) == k]
                      for i, (b, c) in enumerate(zip(true_boxes, true_classes))}
            detections = [(i, float(s), np.asarray(b))
                          for i, (bs, ss, cs) in enumerate(zip(pred_boxes, pred_scores, pred_classes))
                          for b, s, c in zip(bs, ss, cs) if int(c) == k]
            ap = _average_precision(detections, truths, threshold)
            if ap is not None:
                aps.append(ap)
        per_threshold.append(np.mean(aps))
    return {"map": float(np.mean(per_threshold)), "ap50": float(per_threshold[0])}
