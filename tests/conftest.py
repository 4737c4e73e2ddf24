import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# One thread: the tiny models are too small to gain from more, and a shared 2-core box loses a lot.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """One `make-tiny` weight set for the whole run (official-format checkpoints converted by the user path)."""
    from diffstyle360_core.tiny import make_tiny

    out = tmp_path_factory.mktemp("tiny_weights")
    make_tiny(out)
    return out
