"""Both pipelines end to end through the CLI on the `make-tiny` set (the path users run)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffstyle360_core.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
CONTENT = ROOT / "workflows" / "images" / "astronaut.png"
STYLE = ROOT / "workflows" / "images" / "style_posterized.png"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    assert main(["make-tiny", str(out)]) == 0
    return out


def _pngs(folder):
    return sorted(Path(folder).glob("view_*.png"))


def test_stylize_end_to_end(tiny, tmp_path):
    out = tmp_path / "out"
    args = ["stylize", "--weights", str(tiny), "--content", str(CONTENT), "--style", str(STYLE),
            "--views", "4", "--steps", "2", "--out", str(out)]
    assert main(args) == 0
    views = _pngs(out)
    assert len(views) == 4
    assert Image.open(views[0]).size == (64, 64)
    gif = Image.open(out / "turntable.gif")
    assert gif.n_frames == 4 and gif.info.get("loop") == 0
    assert (out / "back_views").is_dir()
    # same seed → same files
    again = tmp_path / "again"
    assert main(args[:-1] + [str(again)]) == 0
    for a, b in zip(views, _pngs(again)):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_stylize_with_blend_mask_style_module_and_circular_windows(tiny, tmp_path):
    mask = np.zeros((64, 64), np.uint8)
    mask[30:50, 16:48] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    args = ["stylize", "--weights", str(tiny), "--content", str(CONTENT), "--style", str(STYLE),
            "--style", str(CONTENT), "--alpha", "0.3", "--style-mask", str(tmp_path / "mask.png"),
            "--style-module", str(tiny / "style_module-tiny.safetensors"), "--views", "6", "--window", "4",
            "--window-mode", "circular", "--overlap", "2", "--tau", "1.1", "--steps", "2", "--out", str(out)]
    assert main(args) == 0
    assert len(_pngs(out)) == 6


def test_stylize_with_yaw_range_guide_frames_and_given_backs(tiny, tmp_path):
    out = tmp_path / "out"
    args = ["stylize", "--weights", str(tiny), "--content", str(CONTENT), "--content-back", str(STYLE),
            "--style", str(STYLE), "--style-back", str(CONTENT), "--yaw-range", "300", "60", "--views", "3",
            "--guide-frames", str(tiny / "cam_condition" / "sphere32"), "--steps", "2", "--cfg", "1",
            "--out", str(out)]
    assert main(args) == 0
    assert len(_pngs(out)) == 3


def test_back_view_end_to_end(tiny, tmp_path):
    out = tmp_path / "back"
    assert main(["back-view", "--weights", str(tiny), "--content", str(CONTENT), "--steps", "2",
                 "--out", str(out)]) == 0
    files = sorted(out.glob("back_*.png"))
    assert len(files) == 1 and Image.open(files[0]).size == (64, 64)


def test_convert_from_original_format_gives_the_same_model(tiny, tmp_path):
    weights = tmp_path / "weights"
    assert main(["convert", "--checkpoint", str(tiny / "original" / "model_state-tiny.th"),
                 "--out", str(weights / "main")]) == 0
    assert main(["convert", "--checkpoint", str(tiny / "original" / "back_head-tiny.th"),
                 "--out", str(weights / "back_view"), "--kind", "back_view"]) == 0
    shutil.copytree(tiny / "cam_condition", weights / "cam_condition")
    runs = []
    for w in (tiny, weights):
        out = tmp_path / f"out_{w.name}"
        assert main(["stylize", "--weights", str(w), "--content", str(CONTENT), "--style", str(STYLE),
                     "--views", "2", "--steps", "2", "--out", str(out)]) == 0
        runs.append([np.asarray(Image.open(p)) for p in _pngs(out)])
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tau", "5"], "tau must be in"),
        (["--views", "40"], "views"),
        (["--alpha", "0.5"], "blend two styles"),
        (["--window", "30"], "window must be in"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(tiny, tmp_path, capsys, extra, message):
    args = ["stylize", "--weights", str(tiny), "--content", str(CONTENT), "--style", str(STYLE),
            "--steps", "1", "--out", str(tmp_path / "o")] + extra
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_missing_files_exit_2(tiny, tmp_path, capsys):
    assert main(["stylize", "--weights", str(tmp_path / "nowhere"), "--content", str(CONTENT), "--style",
                 str(STYLE), "--out", str(tmp_path / "o")]) == 2
    assert "make-tiny" in capsys.readouterr().err
    assert main(["stylize", "--weights", str(tiny), "--content", str(tmp_path / "missing.png"), "--style",
                 str(STYLE), "--steps", "1", "--out", str(tmp_path / "o")]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert main(["stylize", "--weights", str(tiny / "main"), "--content", str(CONTENT), "--style", str(STYLE),
                 "--out", str(tmp_path / "o")]) == 2
    assert "pass its parent" in capsys.readouterr().err
    bad = tmp_path / "broken.th"
    bad.write_bytes(b"not a checkpoint")
    assert main(["convert", "--checkpoint", str(bad), "--out", str(tmp_path / "c")]) == 2
    assert "broken.th" in capsys.readouterr().err


def test_own_condition_folder_replaces_a_missing_one(tiny, tmp_path):
    weights = tmp_path / "w"
    shutil.copytree(tiny / "main", weights / "main")
    shutil.copytree(tiny / "back_view", weights / "back_view")
    out = tmp_path / "o"
    args = ["stylize", "--weights", str(weights), "--content", str(CONTENT), "--style", str(STYLE), "--views", "2",
            "--steps", "1", "--mask-mode", "confined", "--style-mask", str(CONTENT), "--out", str(out)]
    assert main(args) == 2  # no condition set anywhere
    assert main(args + ["--conditions", str(tiny / "cam_condition" / "sphere32")]) == 0
    assert len(_pngs(out)) == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--device", "cuda:7"] if not __import__("torch").cuda.is_available() else ["--device", "nonsense"],
         "--device"),
        (["--fps", "0"], "--fps"),
        (["--guide-frames", "/nonexistent/frames"], "--guide-frames"),
    ],
)
def test_bad_options_fail_before_sampling(tiny, tmp_path, capsys, extra, message):
    args = ["stylize", "--weights", str(tiny), "--content", str(CONTENT), "--style", str(STYLE),
            "--steps", "1", "--out", str(tmp_path / "o")] + extra
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_output_paths_that_are_files_are_reported(tiny, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main(["back-view", "--weights", str(tiny), "--content", str(CONTENT), "--steps", "1",
                 "--out", str(blocker)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["stylize", "--weights", str(tiny), "--content", str(CONTENT), "--style", str(STYLE), "--steps", "1",
                 "--out", str(blocker / "sub")]) == 2
    assert main(["make-tiny", str(blocker / "sub")]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_pipeline_keeps_dtype(tiny, dtype):
    import torch

    from diffstyle360_core.pipeline import DiffStyle360Pipeline

    pipe = DiffStyle360Pipeline.from_pretrained(tiny, dtype=getattr(torch, dtype))
    out = pipe.stylize(str(CONTENT), str(STYLE), views=2, steps=1, cfg=3.0, eta=0.5)
    assert out.views.dtype == getattr(torch, dtype) and bool(torch.isfinite(out.views).all())


def test_foreign_or_broken_model_folders_are_reported(tiny, tmp_path, capsys):
    weights = tmp_path / "w"
    shutil.copytree(tiny, weights)
    (weights / "main" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    args = ["stylize", "--weights", str(weights), "--content", str(CONTENT), "--style", str(STYLE), "--steps", "1",
            "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "not a DiffStyle360 model config" in err and "config.json" in err
    (weights / "main" / "config.json").write_text("{broken")
    assert main(args) == 2
    assert "config.json" in capsys.readouterr().err
    assert main(args[:2] + [str(tiny / "original" / "model_state-tiny.th")] + args[3:]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(args[:1] + ["--weights", str(tiny)] + args[3:] + ["--seed", str(2**70)]) == 2
    assert "seed" in capsys.readouterr().err
    assert main(args[:1] + ["--weights", str(tiny)] + args[3:] + ["--style-module", str(CONTENT)]) == 2
    assert "unsupported file type" in capsys.readouterr().err


def test_yaw_range_alone_takes_every_view_in_it(tiny, tmp_path):
    out = tmp_path / "o"
    assert main(["stylize", "--weights", str(tiny), "--content", str(CONTENT), "--style", str(STYLE),
                 "--yaw-range", "0", "45", "--steps", "1", "--cfg", "1", "--out", str(out)]) == 0
    assert len(_pngs(out)) == 5  # 0, 11.25, 22.5, 33.75, 45 degrees of the 32-view set
