"""Training: ``fext train`` from scratch or from a checkpoint, the loop, the schedule, the saved state.

- :mod:`~fext.training.run`: :func:`train` (a whole run), :func:`fit` (its epochs).
- :mod:`~fext.training.start`: what a run builds before its first epoch, fresh or resumed.
- :mod:`~fext.training.loop`: :func:`train_one_epoch`, :func:`validate`, Ctrl-C handling.
- :mod:`~fext.training.objectives`: what a step optimises per ``training.RECIPE`` (inputs, loss).
- :mod:`~fext.training.schedule`: :func:`lr_at`, the learning rate at a step.
- :mod:`~fext.training.state`: trainer_state.pt (optimizer, step, generators) for exact resumes.
- :mod:`~fext.training.outputs`: history.json, training_history.png, summary.txt, TensorBoard.
"""

from fext.training.loop import train_one_epoch, validate
from fext.training.objectives import reconstruction_loss
from fext.training.run import TrainingInterrupted, fit, train
from fext.training.schedule import LR_FLOOR, lr_at
from fext.training.start import resumed_config

__all__ = [
    "LR_FLOOR",
    "TrainingInterrupted",
    "fit",
    "lr_at",
    "reconstruction_loss",
    "resumed_config",
    "train",
    "train_one_epoch",
    "validate",
]
