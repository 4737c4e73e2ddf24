"""Weights copied at load live in memory the system gets back when the model is dropped (issue 15)."""

import gc
import mmap
import subprocess
import sys
import textwrap
import time
import weakref
from pathlib import Path

import pytest
import torch

from diffstyle360_core import returnable_memory
from diffstyle360_core.config import MAIN
from diffstyle360_core.weights import load_model, load_style_module

LINUX = sys.platform.startswith("linux")
PAGE = mmap.PAGESIZE
ROOT = Path(__file__).resolve().parent.parent


def _mapping_of(address: int):
    """(start, end, name) of the mapping of this process that holds ``address`` (/proc/self/maps)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= address < hi:
            return lo, hi, fields[5] if len(fields) > 5 else ""
    raise AssertionError(f"{address:#x} is in no mapping")


def _in_a_page_mapping_of_its_own(tensor: torch.Tensor) -> bool:
    """Page-aligned, inside anonymous memory that is not the C heap (the kernel may merge neighbouring
    anonymous mappings into one line of /proc/self/maps, so the line's start is not checked)."""
    lo, hi, name = _mapping_of(tensor.data_ptr())
    return tensor.data_ptr() % PAGE == 0 and name == "" and tensor.data_ptr() + tensor.nbytes <= hi


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(0,), (3, 5), (512, 1024)])  # empty, small (heap), 2 MiB (own mapping)
def test_copy_is_an_exact_contiguous_copy_with_its_own_storage(shape, dtype):
    source = torch.randn(shape, dtype=torch.float32).t() if len(shape) == 2 else torch.randn(shape)
    copied = returnable_memory.copy(source, dtype)
    expected = source.to(dtype or source.dtype)
    assert copied.dtype == expected.dtype and copied.shape == source.shape and copied.is_contiguous()
    assert torch.equal(copied, expected)  # the same rounding as Tensor.to: one conversion, not another code path
    if source.numel():
        assert copied.untyped_storage().data_ptr() != source.untyped_storage().data_ptr()
    copied.add_(1)  # writable, and independent of the source
    assert torch.equal(source.to(dtype or source.dtype), expected)


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/maps")
def test_large_copies_get_their_own_page_aligned_mapping():
    big = returnable_memory.copy(torch.randn(1024, 1024), torch.bfloat16)  # 2 MiB
    small = returnable_memory.copy(torch.randn(16), torch.bfloat16)
    assert _in_a_page_mapping_of_its_own(big)
    assert _mapping_of(small.data_ptr())[2] == "[heap]"  # below MIN_MAPPED_BYTES: the ordinary allocator


@pytest.mark.skipif(not LINUX, reason="reads VmRSS from /proc")
def test_dropped_copies_go_back_to_the_system():
    """256 MiB of 2 MiB bf16 casts, dropped: RSS returns to where it was. The same casts made with ``Tensor.to``
    stay in RSS after the drop (glibc keeps freed heap once a large free has raised its mmap threshold, as a
    model load does): 224 → 481 → 481 MiB on the dev box."""
    script = textwrap.dedent("""
        import gc, torch
        from bench.load_memory import rss_bytes as rss
        from diffstyle360_core import returnable_memory
        source = torch.randn(1024, 1024)  # 4 MiB fp32
        source.new_empty(6 * 2 ** 20)  # freed at once: a 24 MiB free raises glibc's mmap threshold to 24 MiB
        before = rss()
        copies = [returnable_memory.copy(source, torch.bfloat16) for _ in range(128)]
        loaded = rss()
        del copies
        gc.collect()
        print(before, loaded, rss())
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    before, loaded, after = (int(x) for x in done.stdout.split())
    mib = 2 ** 20
    assert loaded - before >= 240 * mib, (before, loaded)
    assert after - before <= 16 * mib, f"RSS {before / mib:.0f} → {loaded / mib:.0f} → {after / mib:.0f} MiB"


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/maps")
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_loader_puts_cast_and_copied_weights_in_returnable_memory(tiny_weights, monkeypatch, dtype):
    """Every weight the loader copies (a cast, or a realigned view of the file's memory map) is in its own
    mapping, so a host unloading the model gives the memory back; with the tiny set's small tensors the
    threshold is lowered to reach the same path the SD-size weights take."""
    monkeypatch.setattr(returnable_memory, "MIN_MAPPED_BYTES", 1)
    base = load_model(Path(tiny_weights) / MAIN, dtype=dtype)
    styled = load_style_module(base, Path(tiny_weights) / "style_module-tiny.safetensors")
    for model in (base, styled):
        tensors = [(n, t) for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.numel()]
        outside = [n for n, t in tensors if not _in_a_page_mapping_of_its_own(t)]
        assert tensors and not outside, outside[:5]
        assert {t.dtype for n, t in tensors if t.is_floating_point()} == {torch.bfloat16 if dtype == "bf16"
                                                                        else torch.float16}


def _settle_earlier_models():
    """Free what earlier tests left to the collector and let its trim run, so a spy sees only this test's."""
    gc.collect()
    time.sleep(returnable_memory.TRIM_DELAY_S + 0.5)


def _wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


@pytest.mark.parametrize("in_a_cycle", [False, True])
def test_a_freed_model_trims_the_heap_once_its_weights_are_gone(monkeypatch, in_a_cycle):
    """trim_when_freed: one trim shortly after the model is released, when its parameters are freed too, also
    when the garbage collector frees it from a reference cycle (objects of a cycle go in any order)."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Conv2d(3, 3, 3))
    if in_a_cycle:
        model[0].owner = [model]  # a plain attribute: the model refers to itself through a list
    weights = [weakref.ref(p) for p in model.parameters()]
    _settle_earlier_models()
    seen = []
    monkeypatch.setattr(returnable_memory, "TRIM_DELAY_S", 0.05)
    monkeypatch.setattr(returnable_memory, "release_freed_heap", lambda: seen.append([w() for w in weights]))
    returnable_memory.trim_when_freed(model)
    model[0](torch.randn(2, 8))  # a model in use trims nothing
    time.sleep(0.2)
    assert seen == []
    del model
    gc.collect()
    assert _wait_for(lambda: seen)
    time.sleep(0.2)
    assert len(seen) == 1 and all(w is None for w in seen[0])


def test_models_freed_together_share_one_trim(monkeypatch):
    _settle_earlier_models()
    calls = []
    monkeypatch.setattr(returnable_memory, "TRIM_DELAY_S", 0.2)
    monkeypatch.setattr(returnable_memory, "release_freed_heap", lambda: calls.append(1))
    models = [torch.nn.Linear(2, 2) for _ in range(3)]
    for m in models:
        returnable_memory.trim_when_freed(m)
    del models, m
    assert _wait_for(lambda: calls)
    time.sleep(0.4)
    assert calls == [1]


@pytest.mark.skipif(not LINUX, reason="reads VmRSS from /proc; glibc's malloc_trim")
def test_releasing_a_model_gives_its_runs_heap_back():
    """Activations freed into glibc's heap (2 MiB blocks once the mmap threshold has risen) stay in RSS; freeing
    a model marked with trim_when_freed hands them back."""
    script = textwrap.dedent("""
        import gc, time, torch
        from bench.load_memory import rss_bytes as rss
        from diffstyle360_core import returnable_memory
        torch.empty(6 * 2 ** 20)  # freed at once: a 24 MiB free raises glibc's mmap threshold
        model = torch.nn.Linear(4, 4)
        returnable_memory.trim_when_freed(model)
        returnable_memory.TRIM_DELAY_S = 0
        before = rss()
        activations, pins = [], []
        for _ in range(128):  # 256 MiB of 2 MiB blocks, each with a small live tensor after it (as in a real
            activations.append(torch.randn(512, 1024))  # process): freed, they cannot merge into the heap's
            pins.append(torch.randn(256))  # top, so only a trim hands them back
        del activations
        gc.collect()
        kept = rss()
        del model
        time.sleep(0.5)  # the trim runs on a timer
        print(before, kept, rss(), returnable_memory.release_freed_heap())
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    before, kept, after, trimmed = done.stdout.split()
    before, kept, after = int(before), int(kept), int(after)
    mib = 2 ** 20
    if trimmed != "True":
        pytest.skip("no malloc_trim in this C library")
    if kept - before < 200 * mib:
        pytest.skip(f"this allocator gave the freed heap back by itself ({before / mib:.0f} → {kept / mib:.0f} MiB)")
    assert after - before <= 16 * mib, f"RSS {before / mib:.0f} → {kept / mib:.0f} → {after / mib:.0f} MiB"
