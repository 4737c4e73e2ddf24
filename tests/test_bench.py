"""The bench command end to end at the tiny size (1 step), its last line, and its helpers."""

import argparse
import io
import re

import pytest
import torch

from bench import bench

LAST = re.compile(r"^speedup_vs_official_schedule=(\d+\.\d\d)$")


@pytest.fixture(scope="module")
def tiny_report():
    out = io.StringIO()
    parser = argparse.ArgumentParser()
    handlers = bench.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--size", "tiny", "--views", "4", "--steps", "1", "--fast-steps", "1",
                              "--window", "2", "--windows-per-batch", "2", "--threads", "1",
                              "--compile-backend", "eager",
                              "--variants", "default,dpmpp_2m,official,offload,compiled,compiled_cudagraphs,"
                              "cudnn_benchmark,fp8"])
    assert set(handlers) == {"bench"} and callable(handlers["bench"])
    assert bench.run(args, out=out) == 0
    return out.getvalue()


def _rows(report):
    """Rows of the final table: {variant: [columns]}."""
    table = report.split("Table above (final):", 1)[1].strip().splitlines()
    rows = {}
    for line in table[1:]:
        if not line.strip():
            break
        rows[line.split()[0]] = line.split()
    return rows


def test_bench_runs_end_to_end_and_ends_with_the_speedup(tiny_report):
    last = tiny_report.rstrip("\n").splitlines()[-1]
    match = LAST.match(last)
    assert match, last
    speedup = float(match.group(1))
    assert 0.05 < speedup < 100
    rows = _rows(tiny_report)
    assert list(rows)[:3] == ["default", "dpmpp_2m", "official"]
    assert list(rows)[-1] == "fp8"  # irreversible: always last
    # official = same outputs at a higher cost (no autocast on the CPU; other batching: float rounding only)
    assert rows["official"][1] == "yes" and float(rows["official"][9]) < 1e-4
    assert rows["dpmpp_2m"][1] == "no" and rows["dpmpp_2m"][2] == "1"
    # the timings the last line is made of
    s_default, s_official = float(rows["default"][3]), float(rows["official"][3])
    assert abs(s_official / s_default - speedup) < 0.01 + 0.006 * speedup
    # GPU-only variants are reported as skipped, not silently dropped
    for gpu_only in ("offload", "fp8", "compiled_cudagraphs", "cudnn_benchmark"):
        assert "skipped on cpu" in " ".join(rows[gpu_only]), gpu_only
    # the compiled path (eager backend: dynamo's wiring, the same kernels) gives the default's views exactly
    assert rows["compiled"][1] == "yes" and float(rows["compiled"][9]) == 0.0
    assert "WARNING" not in tiny_report  # both official-loop patches fired
    flops = re.search(r"FLOP per denoising step.*default ([\d.]+) (\w)FLOP, official ([\d.]+) (\w)FLOP", tiny_report)
    assert flops, tiny_report[:600]


def test_official_loop_costs_more_flops_but_changes_nothing(tiny_report):
    m = re.search(r"default ([\d.]+) (\w)FLOP, official ([\d.]+) (\w)FLOP", tiny_report)
    scale = {"T": 1e12, "G": 1e9, "M": 1e6}
    default, official = float(m.group(1)) * scale[m.group(2)], float(m.group(3)) * scale[m.group(4)]
    assert official > 1.2 * default


def test_cpu_attention_flops_are_counted():
    from torch.utils.flop_counter import FlopCounterMode

    bench._register_cpu_sdpa_flops()
    q = torch.randn(1, 2, 16, 8)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 2 * (2 * 16 * 16 * 8) * 2  # QK^T and PV, 2 FLOP per MAC, 2 heads


def test_memory_table_is_na_on_cpu():
    out = io.StringIO()
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--size", "tiny", "--memory-table", "--device", "cpu"])
    bench.run(args, out=out)
    assert "n/a on cpu" in out.getvalue()


def test_bad_numbers_are_refused():
    assert bench.main(["--size", "tiny", "--steps", "0"]) == 2


def test_flop_breakdown_on_meta_tensors_equals_the_counted_real_step():
    """The per-part table (meta tensors, no compute) adds up to what a real tiny step counts."""
    from diffstyle360_core.config import MAIN, tiny_config
    from bench.flops import format_breakdown, step_flop_breakdown

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--size", "tiny", "--views", "6", "--window", "2", "--windows-per-batch", "2",
                              "--threads", "1"])
    runner = bench.Bench(args, io.StringIO())
    runner.build()
    counted = runner.count_step_flops()
    rows = step_flop_breakdown(tiny_config(MAIN), 6, window=2, windows_per_batch=2, dtype=torch.float32)
    parts = {r.part: r.flops for r in rows}
    assert sum(parts.values()) == pytest.approx(counted, rel=1e-9)
    assert {"conditional: pose ControlNet", "conditional: view-consistency modules",
            "unconditional: UNet"} <= set(parts)
    assert "unconditional: pose ControlNet" not in parts  # the CFG branch runs no ControlNet (facts §1)
    # the references make the conditional UNet dearer than the unconditional one
    assert parts["conditional: UNet"] > parts["unconditional: UNet"] > 0
    table = format_breakdown(rows, floor_tflops=100.0)
    assert table.splitlines()[-1].startswith("total") and "100.0%" in table.splitlines()[-1]
