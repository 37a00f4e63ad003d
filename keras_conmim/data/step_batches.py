"""Batches indexed by the run's global step, as a `keras.utils.PyDataset`:
what makes a resumed run read exactly the batches the stopped one would
have (fine-tuning without TensorFlow, the downstream recipes)."""

import keras


class StepBatches(keras.utils.PyDataset):
    """An endless stream whose batch `i` is global step `first_step + i`
    (`batch_of(step)`), for `fit(..., steps_per_epoch=steps_per_epoch)`.

    Endless on purpose: Keras shuffles the indices of a finite `PyDataset`
    within each epoch (`fit(shuffle=True)`, the default) and may read a batch
    ahead across an epoch's end, so an epoch-counting dataset fed steps out of
    order and a resumed run did not see the stopped run's batches. An endless
    one is read once, in order, across all epochs; a batch depends on its
    step alone, so reading ahead changes nothing.
    `steps_per_epoch` is kept for the callers' bookkeeping (`len`)."""

    def __init__(self, batch_of, first_step, steps_per_epoch):
        super().__init__()
        self.batch_of = batch_of
        self.first_step = int(first_step)
        self.steps_per_epoch = int(steps_per_epoch)

    @property
    def num_batches(self):
        return None  # endless: fit's steps_per_epoch cuts the epochs

    def __len__(self):
        return self.steps_per_epoch

    def __getitem__(self, i):
        return self.batch_of(self.first_step + int(i))
