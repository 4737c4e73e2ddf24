import os
import signal
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# A shell that starts the suite in the background without job control (`cmd &` in a script) leaves SIGINT
# ignored, for us and every child: the Ctrl-C tests need Python's own handler (children then get the default).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# One thread: the tiny models are too small to gain from more, and a shared 2-core box loses a lot.
# DS360_TEST_THREADS=N runs the suite with N torch threads (CI runs the model and weight tests again with 2,
# so a result that only holds with one thread's summation order shows up).
_THREADS = os.environ.get("DS360_TEST_THREADS", "1")
if not _THREADS.isdigit() or int(_THREADS) < 1:
    raise pytest.UsageError(f"DS360_TEST_THREADS must be a positive integer, got {_THREADS!r}")
torch.set_num_threads(int(_THREADS))


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
