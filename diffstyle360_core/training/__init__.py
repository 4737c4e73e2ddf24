"""Fine-tuning the Style Appearance and view-consistency modules (paper §3.4, supplementary §6–7).

``train(config)`` runs the recipe with Hugging Face accelerate (a stop by Ctrl-C,
SIGTERM or SIGHUP saves the current step and raises ``TrainingInterrupted``; a
checkpoint that cannot be resumed raises ``CheckpointError``); ``validate_dataset``
checks a dataset folder; ``make_tiny_dataset`` writes a tiny one. The CLI
subcommands (``train``, ``make-tiny-dataset``) come from :mod:`.cli`.
"""

from .config import ConfigError, TrainConfig
from .dataset import DatasetError, make_tiny_dataset, validate_dataset
from .interrupt import TrainingInterrupted
from .resume import CheckpointError

__all__ = ["train", "TrainConfig", "ConfigError", "DatasetError", "CheckpointError", "TrainingInterrupted",
           "validate_dataset", "make_tiny_dataset", "load_trained_module"]


def train(config, *, progress: bool = True):
    """See :func:`diffstyle360_core.training.loop.train` (imported lazily: accelerate loads on first use)."""
    from .loop import train as _train

    return _train(config, progress=progress)


def load_trained_module(model, path, **kwargs):
    from .checkpoint import load_trained_module as _load

    return _load(model, path, **kwargs)
