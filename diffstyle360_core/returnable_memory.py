"""CPU copies of weights in memory the operating system gets back the moment they are freed.

Why: a model's weights are a few thousand tensors of 1-30 MB. Copied into
ordinary allocations (a cast at load, an aligned copy of a memory-mapped
file), most of them land on glibc's heap, and when the model is dropped glibc
keeps the freed heap for later: a host's "unload" left ~4 GiB of RSS per
SD-size model behind (bench/RESULTS.md, issue 15). Each large copy here gets
its own anonymous memory mapping instead, which ``munmap`` returns whole when
the tensor's storage dies. Tensors stay ordinary CPU tensors, each with its
own storage (no aliasing between weights), page-aligned. Small tensors
(biases, norms) use the ordinary allocator: their total is a few MB.

What a run computes (activations) is freed into the same heap; a host that
drops a model can hand that back too with :func:`trim_when_freed`, as ComfyUI
asks of Windows' allocator (``MIMALLOC_PURGE_DELAY=0``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import mmap
import threading
from typing import Optional

import torch

#: Tensors at least this large get their own mapping (smaller ones: the page rounding would cost more than they do).
MIN_MAPPED_BYTES = 1 << 20
#: mmap's default for anonymous memory is MAP_SHARED (memory a forked child would write through to ours).
_PRIVATE = {"flags": mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS} if hasattr(mmap, "MAP_PRIVATE") else {}


def empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor; one of ``MIN_MAPPED_BYTES`` or more lives in its own anonymous mapping."""
    numel = math.prod(int(size) for size in shape)
    nbytes = numel * dtype.itemsize
    if nbytes == 0 or nbytes < MIN_MAPPED_BYTES:
        return torch.empty(tuple(shape), dtype=dtype)
    # zero-filled on first touch, unmapped with its last user; private (copy-on-write in a forked child) like
    # the allocator's own mappings, where the platform has the flag (POSIX)
    pages = mmap.mmap(-1, nbytes, **_PRIVATE)
    return torch.frombuffer(pages, dtype=dtype, count=numel).view(tuple(shape))


def copy(tensor: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A contiguous CPU copy of ``tensor`` (cast to ``dtype`` if given), in returnable memory when large."""
    out = empty(tensor.shape, dtype or tensor.dtype)
    out.copy_(tensor.detach())
    return out


def release_freed_heap() -> bool:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim(0)``); False where there is none.

    Changes no setting: it only returns memory that is already free (the heap
    left by a run's activations), so other code in the process sees no difference.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (macOS, Windows, musl: nothing to trim)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


#: Seconds from a model's release to the trim. A model in a reference cycle is freed by the garbage collector,
#: which may free its weights after the model object itself: the trim waits for that pass to end.
TRIM_DELAY_S = 0.5

_trim_lock = threading.Lock()
_trim_scheduled = False


def _run_scheduled_trim() -> None:
    global _trim_scheduled
    with _trim_lock:
        _trim_scheduled = False
    release_freed_heap()


def _trim_soon() -> None:
    """One trim ``TRIM_DELAY_S`` from now on a daemon timer (models freed together share it)."""
    global _trim_scheduled
    with _trim_lock:
        if _trim_scheduled:
            return
        _trim_scheduled = True
    timer = threading.Timer(TRIM_DELAY_S, _run_scheduled_trim)
    timer.daemon = True
    timer.start()


class _TrimOnRelease:
    """Set on a model: dies with it (however it is freed) and schedules the trim."""

    def __del__(self):
        try:
            _trim_soon()
        except Exception:  # interpreter shutdown (no new threads): nothing left to give back
            pass


def trim_when_freed(model) -> None:
    """When ``model`` is freed (a host unloading it), also hand the heap its runs left behind back to the system
    (:func:`release_freed_heap`, ``TRIM_DELAY_S`` later)."""
    model._ds360_trim_on_release = _TrimOnRelease()
