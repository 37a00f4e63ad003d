"""Runs: the engine every recipe stands on (`engine.Run`: the folder and its
lock, fresh or resume, move-aside, config.json, checkpoints, log.csv,
results.json) and the run folder's files and lock (`folder`)."""

from keras_conmim.runs import folder
from keras_conmim.runs.engine import Run, grid

__all__ = ["Run", "folder", "grid"]
