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
"""

from __future__ import annotations

import mmap
from typing import Optional

import torch

#: Tensors at least this large get their own mapping (smaller ones: the page rounding would cost more than they do).
MIN_MAPPED_BYTES = 1 << 20


def empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor; one of ``MIN_MAPPED_BYTES`` or more lives in its own anonymous mapping."""
    numel = 1
    for size in shape:
        numel *= int(size)
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if nbytes == 0 or nbytes < MIN_MAPPED_BYTES:
        return torch.empty(tuple(shape), dtype=dtype)
    pages = mmap.mmap(-1, nbytes)  # anonymous, private, zero-filled on first touch; unmapped with its last user
    return torch.frombuffer(pages, dtype=dtype, count=numel).view(tuple(shape))


def copy(tensor: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A contiguous CPU copy of ``tensor`` (cast to ``dtype`` if given), in returnable memory when large."""
    out = empty(tensor.shape, dtype or tensor.dtype)
    out.copy_(tensor.detach())
    return out
