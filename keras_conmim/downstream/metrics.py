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
    """detections: list of (image, score, row) in falling score order;
    truths: {image: IoU matrix [rows, truth objects]}; crowds: {image: overlap
    matrix [rows, crowd regions]} (a detection that matches no truth but
    covers a crowd region is ignored, as COCO evaluation does)."""
    total = sum(m.shape[1] for m in truths.values())
    if total == 0:
        return None
    used = {image: np.zeros(m.shape[1], bool) for image, m in truths.items()}
    hits = np.zeros(len(detections))
    counted = np.ones(len(detections), bool)
    for i, (image, _, row) in enumerate(detections):
        gt = truths.get(image)
        if gt is not None and gt.shape[1]:
            ious = gt[row].copy()
            ious[used[image]] = -1
            best = int(np.argmax(ious))
            if ious[best] >= threshold:
                used[image][best] = True
                hits[i] = 1
                continue
        crowd = None if crowds is None else crowds.get(image)
        if crowd is not None and crowd.shape[1] and crowd[row].max() >= threshold:
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


def _coco_ap(pred_scores, pred_classes, true_classes, iou, crowd_classes=None, crowd_iou=None):
    """`{"map", "ap50"}` from per-image matrices: `iou(i, dets, truths)` ->
    `[len(dets), len(truths)]` for image i's detection / truth indices, and
    `crowd_iou(i, dets, crowds)` the same against its crowd regions."""
    classes = sorted({int(c) for row in true_classes for c in np.asarray(row) if c >= 0})
    if not classes:
        raise ValueError("no ground-truth objects: mAP is undefined")
    per_class = []  # [class][threshold]; a class without truth objects has no AP
    for k in classes:
        truths, crowds, detections = {}, ({} if crowd_iou is not None else None), []
        for i, (ss, cs) in enumerate(zip(pred_scores, pred_classes)):
            dets = np.nonzero(np.asarray(cs) == k)[0]
            gts = np.nonzero(np.asarray(true_classes[i]) == k)[0]
            truths[i] = iou(i, dets, gts)
            if crowds is not None:
                crowds[i] = crowd_iou(i, dets, np.nonzero(np.asarray(crowd_classes[i]) == k)[0])
            detections += [(i, float(ss[d]), row) for row, d in enumerate(dets)]
        detections.sort(key=lambda d: -d[1])  # stable: image order, then row order
        aps = [_average_precision(detections, truths, t, crowds) for t in COCO_IOU_THRESHOLDS]
        if aps[0] is not None:
            per_class.append(aps)
    per_threshold = np.mean(per_class, axis=0)
    return {"map": float(np.mean(per_threshold)), "ap50": float(per_threshold[0])}


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
    def iou(i, dets, gts):
        return box_iou(np.asarray(pred_boxes[i])[dets], np.asarray(true_boxes[i])[gts])

    def crowd_iou(i, dets, crowd):
        boxes = np.asarray(crowd_boxes[i])[crowd]
        return np.array([crowd_overlap(b, boxes) for b in np.asarray(pred_boxes[i])[dets]]
                        ).reshape(len(dets), len(crowd))

    return _coco_ap(pred_scores, pred_classes, true_classes, iou, crowd_classes,
                    None if crowd_boxes is None else crowd_iou)


def mask_iou(a, b, crowd=False):
    """IoU matrix `[len(a), len(b)]` of binary masks `[k, H, W]`; with
    `crowd`, COCO's overlap with crowd regions: intersection over the area
    of the `a` mask."""
    a, b = np.asarray(a), np.asarray(b)
    a = a.reshape(len(a), int(np.prod(a.shape[1:]))).astype(np.float64)
    b = b.reshape(len(b), int(np.prod(b.shape[1:]))).astype(np.float64)
    inter = a @ b.T
    area_a, area_b = a.sum(1), b.sum(1)
    union = area_a[:, None] if crowd else area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def instance_masks(instances, rows):
    """Binary masks `[rows, H, W]` of one image's instance map (g + 1 = the
    object in row g)."""
    instances = np.asarray(instances)
    return instances[None] == (np.arange(rows) + 1)[:, None, None]


def coco_mask_map(pred_masks, pred_scores, pred_classes, true_instances, true_classes,
                  crowd_masks=None, crowd_classes=None):
    """COCO mask mAP@[.5:.95] and AP50 (pycocotools' `segm` evaluation).

    Args (one entry per image; rows with class < 0 are ignored):
        pred_masks: `[n, D, H, W]` binary; pred_scores / pred_classes: `[n, D]`.
        true_instances: `[n, H, W]` instance maps (0 none, g + 1 the object in
            row g of `true_classes` `[n, G]`; other values, such as 255, belong
            to no object).
        crowd_masks, crowd_classes: optional `[n, C, H, W]` / `[n, C]` crowd
            regions (a detection of the class that matches no object but whose
            own area lies in the region by at least the threshold is ignored).
    Returns `{"map", "ap50"}` (0..1), equal to `COCOeval(iouType="segm")`
    (tests/test_instance.py checks it)."""
    def iou(i, dets, gts):
        truth = instance_masks(true_instances[i], len(true_classes[i]))[gts]
        return mask_iou(np.asarray(pred_masks[i])[dets], truth)

    def crowd_iou(i, dets, crowd):
        return mask_iou(np.asarray(pred_masks[i])[dets], np.asarray(crowd_masks[i])[crowd],
                        crowd=True)

    return _coco_ap(pred_scores, pred_classes, true_classes, iou, crowd_classes,
                    None if crowd_masks is None else crowd_iou)
