"""The core: the encoder (`vit`), the pre-training model (`conmim`) and what
`model.fit` needs to train them (`layers`, `losses`, `masking`, `views`,
`projector`, `train_step`, `optimizers`, `callbacks`, `distribute`), resizing
an encoder to another image size (`resize`) and loading any file of them by
registered name (`loading`). Keras and numpy only, on all three backends."""
