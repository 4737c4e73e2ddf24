"""Tiny random DiffStyle360 pipelines for the pipeline tests (built in memory, no weight files)."""

import torch

from diffstyle360_core.cameras import load_condition_set
from diffstyle360_core.config import BACK_VIEW, MAIN, tiny_config
from diffstyle360_core.model import DiffStyle360Model
from diffstyle360_core.pipeline import DiffStyle360Pipeline
from diffstyle360_core.tiny import write_tiny_condition_set


def random_model(kind: str, seed: int, jitter: float = 0.0) -> DiffStyle360Model:
    """A seeded tiny model in eval mode; ``jitter`` adds seeded noise of that scale to every parameter
    (so zero-initialised layers, e.g. the temporal output projections, do something)."""
    torch.manual_seed(seed)
    model = DiffStyle360Model(tiny_config(kind)).eval()
    if jitter:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * jitter)
    return model


def tiny_pipeline(folder, views: int, jitter: float = 0.0) -> DiffStyle360Pipeline:
    """Random main (seed 0) and back-view (seed 1) models and ``views`` tiny 64-px camera renders in ``folder``."""
    write_tiny_condition_set(folder, size=64, n=views)
    return DiffStyle360Pipeline(random_model(MAIN, 0, jitter), random_model(BACK_VIEW, 1, jitter),
                                load_condition_set(folder, 64))
