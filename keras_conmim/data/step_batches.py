"""Batches indexed by the run's global step, as a `keras.utils.PyDataset`:
what makes a resumed run read exactly the batches the stopped one would
have (fine-tuning without TensorFlow, the downstream recipes)."""

import keras


class StepBatches(keras.utils.PyDataset):
    """`fit(..., steps_per_epoch=steps_per_epoch)` over `batch_of(step)`: fit's
    epoch e, batch i is global step `first_step + e * steps_per_epoch + i`
    (fit calls `on_epoch_end` between epochs)."""

    def __init__(self, batch_of, first_step, steps_per_epoch):
        super().__init__()
        self.batch_of = batch_of
        self.first_step = first_step
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0

    def __len__(self):
        return self.steps_per_epoch

    def on_epoch_end(self):
        self.epoch += 1

    def __getitem__(self, i):
        return self.batch_of(self.first_step + self.epoch * self.steps_per_epoch + i)
