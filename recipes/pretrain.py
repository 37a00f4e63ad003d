"""ConMIM pre-training, from the command line.

    python recipes/pretrain.py --backend jax
    python recipes/pretrain.py --backend torch --epochs 1 --steps-per-epoch 20
    python recipes/pretrain.py --config my_run.yaml --lr 1e-3      # flags override the file
    python recipes/pretrain.py --data dir:/photos --preset vit_tiny_p4_32 --precision mixed_bfloat16

Default data: the Fashion-MNIST slice shipped inside the package (4,000
images, 28 x 28 gray). In --output (default saved_models/) it writes:
`config.json` (the resolved config), `checkpoints/ckpt-<step>.keras` (the last
--keep-checkpoints, written atomically), `log.csv`, `tensorboard/` (when
TensorFlow is installed), `views/` (pictures of what the model is given), and
at the end `conmim.keras`, `teacher_encoder.keras`, `student_encoder.keras`
and `results.json` (the result, for scripts). Flags, config files and
recipes: docs/pretraining.md. Run it again with the same --output and it resumes from the newest
checkpoint, exactly where it stopped; a command whose settings differ from
the run's (other than where files go and how often) is refused, naming the
differences. `--no-resume` starts over, moving the run that was there to
`previous_runs/<time>/` inside --output (nothing is deleted). config.json is
the configuration that ran, with a history of its starts and resumes. A NaN
stops the run with the command that goes on from the last good checkpoint
(`--on-nan rollback` does it by itself); a NaN that comes back steps back to
an earlier checkpoint, down to the run's initial state. The run itself is
the package's engine: `keras_conmim.runs.pretraining.pretrain`.
"""

import sys

import recipe_main  # stdlib only: chooses the backend before Keras loads

if __name__ == "__main__":
    recipe_main.choose_backend()

from keras_conmim.runs import cli  # noqa: E402  (after choosing the backend)
from keras_conmim.runs.pretrain_config import resolve_config  # noqa: E402


def main(argv=None):
    """Resolve the flags (preset < --config file < flags), then run or resume."""
    argv = sys.argv[1:] if argv is None else list(argv)
    config, resume, sources = resolve_config(argv)
    cli.use_backend(config["backend"])
    from keras_conmim.runs.pretraining import pretrain

    return pretrain(config, resume, sources, argv)


if __name__ == "__main__":
    recipe_main.run(main)
