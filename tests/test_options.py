"""The single validation layer: ranges, types, choices, per-call settings, device/dtype policy."""

import numpy as np
import pytest
import torch

from diffstyle360_core.devices import resolve_device, resolve_dtype
from diffstyle360_core.options import (
    CFG,
    SEED,
    STEPS,
    TAU,
    FusionSettings,
    InputError,
    InputTypeError,
    SamplerOptions,
    WindowOptions,
    check_choice,
    tau_by_resolution,
)


@pytest.mark.parametrize("value, expected", [(3, 3), (np.int64(3), 3), (3.0, 3), (np.int32(7), 7),
                                             (torch.tensor(5), 5), (np.array(9), 9)])
def test_integer_options_accept_python_numpy_and_0d_tensor_scalars(value, expected):
    out = STEPS.check(value)
    assert out == expected and type(out) is int


@pytest.mark.parametrize("value", [True, np.bool_(False), "50", None, [50], 2.5, float("nan")])
def test_integer_options_refuse_non_numbers_with_the_argument_named(value):
    with pytest.raises(InputError, match="steps") as info:
        STEPS.check(value)
    if not isinstance(value, float):
        assert isinstance(info.value, TypeError)  # types are TypeErrors as well as ValueErrors


def test_seed_takes_comfyui_full_range():
    assert SEED.check(2**64 - 1) == 2**64 - 1
    assert SEED.check(np.uint64(2**64 - 1)) == 2**64 - 1
    for bad in (-1, 2**64):
        with pytest.raises(InputError, match=r"seed must be in \[0, 18446744073709551615\]"):
            SEED.check(bad)


@pytest.mark.parametrize("value", ["1.05", True, None, [1.05], float("inf")])
def test_tau_refuses_strings_bools_lists_and_inf(value):
    with pytest.raises(InputError, match="tau"):
        FusionSettings(tau=value).checked()


def test_float_ranges_carry_their_hint():
    with pytest.raises(InputError, match=r"cfg must be in \[0.0, 30.0\], got 31.0\. The official sampler uses 3"):
        CFG.check(31)
    assert TAU.check(np.float32(1.05)) == pytest.approx(1.05)


def test_sampler_options_checked_gives_plain_types():
    opts = SamplerOptions(seed=np.int64(3), steps=np.int64(4), cfg=np.float32(2.5), eta=0, scheduler="unipc").checked()
    assert (opts.seed, opts.steps, opts.cfg, opts.eta, opts.scheduler) == (3, 4, 2.5, 0.0, "unipc")
    assert all(type(v) in (int, float, str) for v in vars(opts).values())
    with pytest.raises(InputError, match="scheduler"):
        SamplerOptions(scheduler="heun").checked()
    with pytest.raises(InputTypeError, match="scheduler"):
        check_choice("scheduler", 3, ("ddim",))


def test_window_options_check_overlap_even_when_it_does_not_apply():
    assert WindowOptions().checked().resolved(8) == (8, 4)
    assert WindowOptions(window=2).checked().resolved(8) == (2, 1)
    with pytest.raises(InputError, match="overlap"):
        WindowOptions(window=4, overlap=4, mode="independent").checked()
    # without a window, the overlap bound is the model's trained window (when known), not the default 8
    assert WindowOptions(overlap=5).checked(trained_window=8).resolved(8) == (8, 5)
    with pytest.raises(InputError, match=r"overlap must be in \[0, window-1\] = \[0, 5\]"):
        WindowOptions(overlap=6).checked(trained_window=6)
    with pytest.raises(InputError, match="window must be at most 12"):
        WindowOptions(window=16).checked(max_window=12)
    with pytest.raises(InputTypeError, match="windows_per_batch"):
        WindowOptions(windows_per_batch="4").checked()


def test_tau_mapping_longest_prefix_wins_and_default_applies():
    s = FusionSettings(tau={"*": 1.1, "down_blocks": 1.3, "down_blocks.0": 1.5}).checked()
    assert s.tau_for("down_blocks.0.attentions.0.transformer_blocks.0.attn1") == 1.5
    assert s.tau_for("down_blocks.2.attentions.0.transformer_blocks.0.attn1") == 1.3
    assert s.tau_for("up_blocks.1.attentions.0.transformer_blocks.0.attn1") == 1.1
    assert FusionSettings(tau={"mid_block": 1.2}).checked().tau_for("up_blocks.1.x") == TAU.default
    with pytest.raises(InputError, match=r"tau\['mid_block'\]"):
        FusionSettings(tau={"mid_block": 5.0}).checked()
    with pytest.raises(InputError, match="empty"):
        FusionSettings(tau={}).checked()


def test_tau_by_resolution_levels():
    assert tau_by_resolution(1.05, {0: None, 1: None}) == 1.05
    table = tau_by_resolution(1.0, {1: 1.2})
    assert table == {"*": 1.0, "down_blocks.1": 1.2, "up_blocks.2": 1.2}
    with pytest.raises(InputError, match="level"):
        tau_by_resolution(1.0, {4: 1.2})


def test_device_and_dtype_policy():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else resolve_device("auto").type)
    with pytest.raises(InputError, match="not a device name"):
        resolve_device("foo")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no usable CUDA"):
            resolve_device("cuda")
    with pytest.raises(InputTypeError, match="device"):
        resolve_device(3)
    assert resolve_dtype("fp16") is torch.float16 and resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype(torch.float32) is torch.float32
    assert resolve_dtype("auto", "cpu") is torch.float32
    with pytest.raises(InputError, match="dtype 'int8'"):
        resolve_dtype("int8")
