"""What a pre-trained encoder is for: the classifier and its linear probe
(`classifier`, `evaluation`), the fine-tuning recipe scaled to the labelled
budget (`finetune_budget`), the feature pyramid dense heads read (`pyramid`),
the instance-segmentation and UperNet heads (`instance`, `upernet`) and the
dense metrics (`metrics`: mIoU, COCO box and mask mAP). Keras and numpy only."""
