"""Other libraries: KerasHub (`kerashub`) and Keras-CV (`kerascv`) backbones
and heads, imported by name only (optional dependencies); their registered
names known from `import keras_conmim` on (`adapters`); the release's PyTorch
checkpoints (`convert.from_torch`); SavedModel / `.keras` / ONNX export
(`export`)."""
