"""The command line end to end on the `make-tiny` set, its checks before any model loads, Ctrl-C and
out-of-memory handling, and the library's input checks at the API boundary (issue 10)."""

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffstyle360_core import loading
from diffstyle360_core.cli import outputs
from diffstyle360_core.cli import main as cli
from diffstyle360_core.cli.main import main
from diffstyle360_core.cli.outputs import RunOutput

ROOT = Path(__file__).resolve().parents[1]
CONTENT = ROOT / "workflows" / "images" / "astronaut.png"
STYLE = ROOT / "workflows" / "images" / "style_posterized.png"


def _pngs(folder):
    return sorted(Path(folder).glob("view_*.png"))


def _temporary(folder):
    """Hidden names a finished run must not leave (lock, temp folders, journal); its manifests stay."""
    return [p.name for p in Path(folder).iterdir()
            if p.name.startswith(".") and not p.name.startswith(".ds360-manifest-")]


def _stylize(weights, out, *extra, style=True):
    return (["stylize", "--weights", str(weights), "--content", str(CONTENT)]
            + (["--style", str(STYLE)] if style else []) + ["--steps", "1", "--out", str(out)] + list(extra))


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if any model would be loaded (the check under test must fire first)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the error was found")

    monkeypatch.setattr(loading, "load_main", refuse)
    monkeypatch.setattr(loading, "load_back_view", refuse)


# --------------------------------------------------------------------------- #
# end to end
# --------------------------------------------------------------------------- #
def test_stylize_end_to_end_with_progress_labels_and_back_view_path(tiny_weights, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_stylize(tiny_weights, out, "--views", "3")) == 0
    err = capsys.readouterr().err
    assert "back views (content + style 1, one batched run)" in err  # both backs, one run
    assert "turntable (3 views)" in err and "decode (3 views)" in err and "(overall 3/3)" in err
    views = _pngs(out)
    assert len(views) == 3 and Image.open(views[0]).size == (64, 64)
    gif = Image.open(out / "turntable.gif")
    assert gif.n_frames == 3 and gif.info.get("loop") == 0
    assert Image.open(out / "back_views" / "content_back_000.png").size == (64, 64)  # model resolution
    assert (out / "back_views" / "style1_back_000.png").is_file()
    assert not _temporary(out)  # no lock or temp folder left
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert outputs.current_files(out, "stylize") == written  # the manifest lists exactly what the run wrote
    assert sorted(cli._stylize_names(3, 1)) == written  # and the names checked before compute are those


def test_offload_moves_each_model_in_turn_and_changes_nothing(tiny_weights, tmp_path, monkeypatch):
    import numpy as np

    from diffstyle360_core import acceleration

    activated = []
    real = acceleration.SequentialOffload.activate
    monkeypatch.setattr(acceleration.SequentialOffload, "activate",
                        lambda self, model: activated.append(model.config.kind) or real(self, model))
    plain, offloaded = tmp_path / "plain", tmp_path / "offloaded"
    assert main(_stylize(tiny_weights, plain, "--views", "2")) == 0
    assert main(_stylize(tiny_weights, offloaded, "--views", "2", "--offload")) == 0
    assert activated[0] == "back_view" and "main" in activated  # back views first, then the main model
    for a, b in zip(_pngs(plain), _pngs(offloaded)):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


@pytest.mark.parametrize("flag, scope, mode", [(("--compile",), "regional", None),
                                               (("--compile", "full"), "full", None),
                                               (("--compile", "cudagraphs"), "full", "reduce-overhead")])
def test_compile_flag_picks_the_scope_for_both_models(tiny_weights, tmp_path, monkeypatch, flag, scope, mode):
    from diffstyle360_core import acceleration

    seen = []
    monkeypatch.setattr(acceleration, "compile_model",
                        lambda model, scope, mode: seen.append((model.config.kind, scope, mode)))
    assert main(_stylize(tiny_weights, tmp_path / "out", "--views", "2", "--steps", "1", *flag)) == 0
    assert sorted(seen) == [("back_view", scope, mode), ("main", scope, mode)]


def test_fp8_weights_flag_stores_both_models_in_fp8_but_the_vae(tiny_weights, tmp_path, monkeypatch):
    out = tmp_path / "fp8"
    seen = []
    from diffstyle360_core import acceleration

    real = acceleration.store_weights_fp8

    def spy(model, dtype, **kw):
        count = real(model, dtype, **kw)
        seen.append((model.config.kind, count, kw.get("skip")))
        assert not hasattr(model.vae.decoder.conv_out, "weight_fp8")
        return count

    monkeypatch.setattr(acceleration, "store_weights_fp8", spy)
    assert main(_stylize(tiny_weights, out, "--views", "2", "--steps", "1", "--fp8-weights")) == 0
    assert sorted(kind for kind, _, _ in seen) == ["back_view", "main"]
    assert all(count > 50 and skip == ("vae",) for _, count, skip in seen)
    assert len(_pngs(out)) == 2


def test_without_style_plain_novel_views(tiny_weights, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_stylize(tiny_weights, out, "--views", "2", "--content-back", str(STYLE), style=False)) == 0
    assert len(_pngs(out)) == 2
    assert "back views" not in capsys.readouterr().err  # the back was given: no back-view run


def test_stylize_with_blend_mask_style_module_and_circular_windows(tiny_weights, tmp_path, monkeypatch):
    from diffstyle360_core import images

    mask = np.zeros((64, 64), np.uint8)
    mask[30:50, 16:48] = 1  # a 0/1 label mask
    Image.fromarray(mask).save(tmp_path / "mask.png")
    opened = []
    real_open = images._open_pil
    monkeypatch.setattr(images, "_open_pil", lambda path, name: opened.append(Path(path).name) or real_open(path, name))
    out = tmp_path / "out"
    assert main(_stylize(tiny_weights, out, "--style", str(CONTENT), "--alpha", "0.3", "--style-mask",
                         str(tmp_path / "mask.png"), "--style-module",
                         str(tiny_weights / "style_module-tiny.safetensors"), "--views", "6", "--window", "4",
                         "--window-mode", "circular", "--overlap", "2", "--tau", "1.1", "--scheduler", "euler",
                         "--crop", "none", "--transparent", "white", "--content-back", str(STYLE),
                         "--style-back", str(CONTENT), "--style-back", str(STYLE))) == 0
    assert len(_pngs(out)) == 6
    assert opened.count("mask.png") == 1  # checked before any model code, decoded once


def test_back_view_end_to_end(tiny_weights, tmp_path):
    out = tmp_path / "back"
    assert main(["back-view", "--weights", str(tiny_weights), "--content", str(CONTENT), "--steps", "1",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".ds360-manifest-back-view.json", "back_000.png"]
    assert Image.open(out / "back_000.png").size == (64, 64)


def test_convert_from_original_format_gives_the_same_weights(tiny_weights, tmp_path):
    from safetensors.torch import load_file

    weights = tmp_path / "weights"
    assert main(["convert", "--checkpoint", str(tiny_weights / "original" / "back_head-tiny.th"),
                 "--out", str(weights / "back_view"), "--kind", "back_view"]) == 0
    files = sorted(p.name for p in (tiny_weights / "back_view").glob("*.safetensors"))
    assert files and files == sorted(p.name for p in (weights / "back_view").glob("*.safetensors"))
    for name in files:
        ours, ref = load_file(weights / "back_view" / name), load_file(tiny_weights / "back_view" / name)
        assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref), name


# --------------------------------------------------------------------------- #
# checks before any model loads
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--tau", "5"], "--tau must be in [0.5, 2.0]"),
        (["--steps", "0"], "--steps must be in [1, 1000]"),
        (["--seed", str(2**70)], "--seed must be in"),
        (["--views", "2000"], "--views must be in [1, 1024]"),
        (["--views", "40"], "only 32 are available"),
        (["--alpha", "0.5"], "--alpha blends two styles"),
        (["--style", str(CONTENT)], "give --alpha"),
        (["--window", "30"], "--window must be in [1, 24]"),
        (["--overlap", "30"], "--overlap must be in [0, 23]"),  # independent mode: not used, still checked
        (["--overlap", "9"], "--overlap must be in [0, window-1]"),
        (["--window", "4", "--overlap", "4", "--window-mode", "circular"], "--overlap must be in [0, window-1]"),
        (["--windows-per-batch", "0"], "--windows-per-batch must be in"),
        (["--yaw-range", "0", "nan"], "--yaw-range must be a finite number"),
        (["--fps", "0"], "--fps must be in"),
        (["--dtype", "fp8"], "--dtype 'fp8' is not supported"),
        (["--device", "nonsense"], "--device 'nonsense'"),
        (["--guide-frames", "/nonexistent/frames"], "--guide-frames folder /nonexistent/frames not found"),
        (["--style-back-mask", str(CONTENT)], "--style-back-mask needs --style-mask"),
        (["--style-mask", str(ROOT / "missing.png")], "--style-mask: file not found"),
        (["--content-back", str(ROOT / "missing.png")], "--content-back: file not found"),
    ],
)
def test_bad_arguments_exit_2_before_any_model_loads(tiny_weights, tmp_path, capsys, no_model_load, extra,
                                                     message):
    assert main(_stylize(tiny_weights, tmp_path / "o", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()  # nothing created either


def test_value_errors_come_before_torch_is_imported(tmp_path):
    import subprocess

    code = ("import sys; from diffstyle360_core.cli.main import main; "
            f"rc = main(['stylize', '--weights', {str(tmp_path)!r}, '--content', 'x.png', '--out', "
            f"{str(tmp_path / 'o')!r}, '--cfg', '99']); print(rc, 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["2", "False"] and "--cfg must be in [0.0, 30.0]" in run.stderr


def test_a_mask_batch_and_an_empty_mask_are_refused_before_loading(tiny_weights, tmp_path, capsys, no_model_load):
    Image.new("L", (64, 64), 0).save(tmp_path / "empty.png")
    assert main(_stylize(tiny_weights, tmp_path / "o", "--style-mask", str(tmp_path / "empty.png"))) == 2
    assert "--style-mask: mask selects nothing" in capsys.readouterr().err


def test_missing_and_wrong_weights_exit_2(tiny_weights, tmp_path, capsys):
    assert main(_stylize(tmp_path / "nowhere", tmp_path / "o")) == 2
    assert "make-tiny" in capsys.readouterr().err
    assert main(_stylize(tiny_weights / "main", tmp_path / "o")) == 2
    assert "give its parent" in capsys.readouterr().err
    bad = tmp_path / "broken.th"
    bad.write_bytes(b"not a checkpoint")
    assert main(["convert", "--checkpoint", str(bad), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "broken.th" in err and "weights_only=False" not in err


def test_output_folder_that_is_a_file_or_unwritable_fails_before_loading(tiny_weights, tmp_path, capsys,
                                                                          monkeypatch, no_model_load):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main(["back-view", "--weights", str(tiny_weights), "--content", str(CONTENT), "--steps", "1",
                 "--out", str(blocker)]) == 2
    assert f"output folder {blocker} is a file" in capsys.readouterr().err
    assert main(_stylize(tiny_weights, blocker / "sub")) == 2
    assert f"cannot create output folder {blocker / 'sub'}" in capsys.readouterr().err

    def denied(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(outputs, "_probe", denied)  # we run as root: permissions are simulated
    assert main(_stylize(tiny_weights, tmp_path / "ro")) == 2
    assert f"output folder {tmp_path / 'ro'} is not writable" in capsys.readouterr().err
    assert not (tmp_path / "ro").exists()


def test_second_run_on_a_busy_folder_is_refused_before_loading(tiny_weights, tmp_path, capsys, no_model_load):
    out = tmp_path / "out"
    with RunOutput(out) as other:  # another run holds the folder
        assert main(_stylize(tiny_weights, out)) == 2
        assert sorted(p.name for p in out.iterdir()) == sorted([".ds360.lock", other.path("x").parent.name])
    assert f"output folder {out} is in use by another DiffStyle360 run" in capsys.readouterr().err
    assert not out.exists()  # the other run made the folder and left it empty: removed


# --------------------------------------------------------------------------- #
# Ctrl-C, full disk, out of memory (the models are replaced by fakes: these test the CLI's handling)
# --------------------------------------------------------------------------- #
@pytest.fixture
def fake_models(monkeypatch):
    """No model loads; ``stylize`` returns (or does) what ``fake_models["stylize"]`` says."""
    from diffstyle360_core import pipeline

    monkeypatch.setattr(loading, "load_main", lambda *a, **k: None)
    monkeypatch.setattr(loading, "load_back_view", lambda *a, **k: None)
    behaviour = {}

    def stylize(self, content, style=None, *, cameras=None, progress=None, **kwargs):
        behaviour.setdefault("calls", []).append(dict(kwargs, cameras=cameras, style=style))
        n = len(cameras)
        for step in (1, 2):
            progress(pipeline.ProgressEvent("turntable", step, 2, step, 2, None))
        if "raise" in behaviour:
            raise behaviour["raise"]
        gen = torch.Generator().manual_seed(n)
        rand = lambda *shape: torch.rand(*shape, generator=gen) * 2 - 1  # noqa: E731
        return pipeline.TurntableResult(rand(n, 3, 64, 64), list(cameras.yaws_deg), rand(1, 3, 64, 64),
                                        [[rand(1, 3, 64, 64)]])

    monkeypatch.setattr(pipeline.DiffStyle360Pipeline, "stylize", stylize)
    return behaviour


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}
def test_ctrl_c_while_sampling_exits_130_with_one_line_and_keeps_the_earlier_run(tiny_weights, tmp_path, capsys,
                                                                               fake_models):
    out = tmp_path / "out"
    assert main(_stylize(tiny_weights, out, "--views", "4")) == 0
    before = _files(out)
    assert len(_pngs(out)) == 4 and "back_views/style1_back_000.png" in before
    capsys.readouterr()
    fake_models["raise"] = KeyboardInterrupt()
    assert main(_stylize(tiny_weights, out, "--views", "2")) == 130
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"interrupted; nothing written ({out} left as it was)"
    assert "Traceback" not in err and err.count("interrupted") == 1
    assert _files(out) == before and not _temporary(out)


def test_ctrl_c_or_full_disk_while_saving_keeps_the_earlier_run(tiny_weights, tmp_path, capsys, monkeypatch,
                                                               fake_models):
    out = tmp_path / "out"
    assert main(_stylize(tiny_weights, out, "--views", "4")) == 0
    before = _files(out)
    capsys.readouterr()
    real_write = RunOutput.write

    def interrupt_at_view_001(self, name, writer):
        if name == "view_001.png":
            raise KeyboardInterrupt  # the signal arrives between two files
        return real_write(self, name, writer)

    monkeypatch.setattr(RunOutput, "write", interrupt_at_view_001)
    assert main(_stylize(tiny_weights, out, "--views", "2")) == 130
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"interrupted; nothing written ({out} left as it was)"
    assert "Traceback" not in err and _files(out) == before

    monkeypatch.setattr(RunOutput, "write", real_write)
    real_save = Image.Image.save

    def disk_full(self, fp, *a, **k):
        if str(fp).endswith("view_001.png"):
            Path(fp).write_bytes(b"\x89PNG")  # what a full disk leaves behind
            raise OSError(28, "No space left on device")
        return real_save(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", disk_full)
    assert main(_stylize(tiny_weights, out, "--views", "2")) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == (f"error: could not write {out / 'view_001.png'} (OSError: No space left on device); "
                   f"nothing in {out} was changed")
    assert _files(out) == before and not _temporary(out)


def test_yaw_range_picks_one_step_with_the_front(tiny_weights, tmp_path, fake_models):
    """The Turntable Camera node's rule (issue 17): -90..90 with 12 views never mixes steps and holds the front."""
    assert main(_stylize(tiny_weights, tmp_path / "out", "--yaw-range", "-90", "90", "--views", "12")) == 0
    yaws = fake_models["calls"][-1]["cameras"].yaws_deg
    assert yaws == [292.5 + 11.25 * k for k in range(6)] + [11.25 * k for k in range(6)]
    assert main(_stylize(tiny_weights, tmp_path / "out", "--views", "12")) == 0  # the whole set: from the front
    assert fake_models["calls"][-1]["cameras"].yaws_deg == [22.5 * k for k in range(12)]


def test_yaw_range_guide_frames_and_fewer_views_over_an_older_run(tiny_weights, tmp_path, fake_models):
    out = tmp_path / "out"
    sphere = tiny_weights / "cam_condition" / "sphere32"
    assert main(_stylize(tiny_weights, out, "--yaw-range", "300", "60", "--views", "3", "--guide-frames",
                         str(sphere))) == 0
    call = fake_models["calls"][-1]
    assert call["cameras"].indices == [27, 0, 5]  # 3 of the 11 views from 303.75° to 56.25°: 56.25° apart, the front
    from diffstyle360_core.cameras import load_condition_set

    full = load_condition_set(sphere, 64)  # a guide frame per view of the set: the chosen ones are used
    assert torch.allclose(call["guide_frames"], (full.images[[27, 0, 5]] + 1) / 2)
    assert len(_pngs(out)) == 3
    assert main(_stylize(tiny_weights, out, "--yaw-range", "0", "45")) == 0
    assert fake_models["calls"][-1]["cameras"].yaws_deg == [0.0, 11.25, 22.5, 33.75, 45.0]
    assert len(_pngs(out)) == 5 and Image.open(out / "turntable.gif").n_frames == 5
    assert main(_stylize(tiny_weights, out, "--views", "2")) == 0
    assert [p.name for p in _pngs(out)] == ["view_000.png", "view_001.png"]  # no stale views 2-4
    assert Image.open(out / "turntable.gif").n_frames == 2


def test_cuda_out_of_memory_is_one_line_with_what_to_lower(tiny_weights, tmp_path, capsys, fake_models):
    fake_models["raise"] = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert main(_stylize(tiny_weights, tmp_path / "o", "--views", "2")) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == ("error: out of GPU memory during turntable; lower --windows-per-batch (now 4), "
                                    "then --window or --views, or use --dtype fp16, or add --offload, then "
                                    "--fp8-weights")
    assert "Traceback" not in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("error, where", [(torch.cuda.OutOfMemoryError("CUDA out of memory"), "GPU memory"),
                                          (MemoryError(), "memory (RAM)")])
def test_out_of_memory_in_training_is_one_line_with_what_to_lower(tmp_path, capsys, monkeypatch, error, where):
    from diffstyle360_core.training import loop

    def out_of_memory(config, **kwargs):
        raise error

    monkeypatch.setattr(loop, "train", out_of_memory)
    assert main(["train", "--weights", str(tmp_path / "w"), "--data", str(tmp_path / "d"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (f"error: out of {where} while training; use --gradient-checkpointing, "
                                    "--mixed-precision bf16 or fp16 on a GPU, or fewer --views")
    assert "Traceback" not in err


def test_plugin_commands_are_wired_and_missing_ones_are_absent(monkeypatch, capsys):
    plugin = types.ModuleType("ds360_fake_plugin")

    def register(sub):
        p = sub.add_parser("hello")
        p.add_argument("--n", type=int, default=1)
        return {"hello": lambda args: 7 if args.n == 3 else None}

    plugin.register = register
    monkeypatch.setitem(sys.modules, "ds360_fake_plugin", plugin)
    monkeypatch.setattr(cli, "PLUGINS", ("ds360_not_written_yet.cli", "ds360_fake_plugin"))
    assert main(["hello", "--n", "3"]) == 7 and main(["hello"]) == 0
    assert main(["bench"]) == 2  # absent: argparse's usage error
    assert "invalid choice: 'bench'" in capsys.readouterr().err


# --------------------------------------------------------------------------- #
# the library API: the same clear errors as the CLI
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def pipe(tiny_weights):
    from diffstyle360_core.pipeline import DiffStyle360Pipeline

    return DiffStyle360Pipeline.from_pretrained(tiny_weights, device="cpu", dtype="fp32")


FAST = dict(steps=1, content_back=str(STYLE))


def _style(**kw):
    from diffstyle360_core.pipeline import Style

    return Style(images=[str(STYLE)], backs=[str(CONTENT)], **kw)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(cfg="3"), "cfg"),
        (dict(tau=None), "tau"),
        (dict(tau=[1.05]), "tau"),
        (dict(tau="1.05"), "tau"),
        (dict(tau=True), "tau"),
        (dict(windows_per_batch="4"), "windows_per_batch"),
        (dict(cameras="x"), "cameras"),
        (dict(steps=2.5), "steps"),
        (dict(seed=-1), "seed"),
        (dict(views=True), "views"),
    ],
)
def test_api_wrong_types_name_the_argument(pipe, kwargs, name):
    from diffstyle360_core.options import InputError

    with pytest.raises((ValueError, TypeError)) as err:
        pipe.stylize(str(CONTENT), _style(), **{"views": 2, **FAST, **kwargs})
    assert isinstance(err.value, InputError), type(err.value)
    assert str(err.value).startswith(name), str(err.value)


def test_api_numpy_scalars_are_accepted(pipe):
    out = pipe.stylize(str(CONTENT), _style(), views=np.int64(2), seed=np.int64(3), steps=np.int64(1),
                       cfg=np.float32(3.0), tau=np.float64(1.05), content_back=str(STYLE))
    assert out.views.shape == (2, 3, 64, 64)


def test_api_cameras_device_and_dtype(pipe, tiny_weights):
    from diffstyle360_core.options import InputError
    from diffstyle360_core.pipeline import DiffStyle360Pipeline

    with pytest.raises(InputError, match=r"^camera must be \[1,3,64,64\]"):
        pipe.back_view(str(CONTENT), steps=1, camera=torch.zeros(1, 3, 8, 8))
    with pytest.raises(InputError, match=r"^camera: .*NaN"):
        pipe.back_view(str(CONTENT), steps=1, camera=torch.full((1, 3, 64, 64), float("nan")))
    with pytest.raises(InputError, match=r"^device 'foo'"):
        DiffStyle360Pipeline.from_pretrained(tiny_weights, device="foo")
    if not torch.cuda.is_available():  # a CPU-only build: said so, not "the weights are corrupt"
        with pytest.raises(InputError, match=r"^device 'cuda': .*no usable CUDA"):
            DiffStyle360Pipeline.from_pretrained(tiny_weights, device="cuda")
    with pytest.raises(InputError, match=r"^dtype 'fp8'"):
        DiffStyle360Pipeline.from_pretrained(tiny_weights, dtype="fp8")
    with pytest.raises(InputError, match=r"^weights"):
        DiffStyle360Pipeline.from_pretrained(None)
    half = DiffStyle360Pipeline.from_pretrained(tiny_weights, dtype="fp16", load_main=False)
    assert half.back_view_model.vae.dtype == torch.float16


def test_api_integer_0_1_mask_stylizes_like_a_float_mask(pipe):
    m = np.zeros((64, 64), np.int64)
    m[20:44, 8:56] = 1
    kw = dict(views=2, seed=4, tau=1.5, cfg=1.0, **FAST)
    as_float = pipe.stylize(str(CONTENT), _style(mask=torch.from_numpy(m).float()), **kw).views
    assert torch.equal(pipe.stylize(str(CONTENT), _style(mask=m), **kw).views, as_float)  # uint8/bool: images tests
    faint = pipe.stylize(str(CONTENT), _style(mask=torch.from_numpy(m).float() / 255), **kw).views
    assert not torch.allclose(faint, as_float, atol=1e-4)  # what reading 0/1 as 0..255 gave


@pytest.mark.parametrize(
    "mask, message",
    [
        (torch.ones(2, 64, 64), "style 1 mask: got a batch of 2 masks"),
        (torch.full((64, 64), 1e-9), "style 1 mask: mask selects nothing"),
        (torch.full((64, 64), 255.0), "style 1 mask: float mask values must be in 0..1"),
        (torch.full((64, 64), float("nan")), "style 1 mask: mask contains NaN"),
    ],
)
def test_api_bad_masks_are_refused(pipe, mask, message):
    from diffstyle360_core.options import InputError

    with pytest.raises(InputError) as err:
        pipe.stylize(str(CONTENT), _style(mask=mask), views=2, **FAST)
    assert message in str(err.value)
