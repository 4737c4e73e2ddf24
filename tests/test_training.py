"""Fine-tuning recipe (issue 9): tiny random model, tiny synthetic dataset, a few CPU steps."""

import json

import pytest
import torch

from diffstyle360_core.training import DatasetError, TrainConfig, make_tiny_dataset, train, validate_dataset
from diffstyle360_core.training.checkpoint import load_trained_module, read_trained_module, training_settings
from diffstyle360_core.training.config import ConfigError
from diffstyle360_core.training.dataset import StylizationDataset
from diffstyle360_core.training.recipe import (StyleTrainingStep, draw_randomness, encode_batch, prepare_model,
                                               step_generator)
from diffstyle360_core.loading import load_cameras
from diffstyle360_core.weights import load_model

VIEWS = 8  # one window of the view-consistency modules: the smallest batch that exercises everything


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("train_data") / "data", samples=2, views=VIEWS)


def _config(tiny_weights, data, out, **kw):
    base = dict(weights=str(tiny_weights), data=str(data), out=str(out), steps=2, views_per_sample=VIEWS,
                learning_rate=1e-3, checkpoint_every=0, preview_every=0, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _fresh(tiny_weights):
    return load_model(tiny_weights / "main")


@pytest.fixture(scope="module")
def trained(tiny_weights, data, tmp_path_factory):
    """Two steps of the paper's recipe (style module), with one preview."""
    out = tmp_path_factory.mktemp("train_out")
    return train(_config(tiny_weights, data, out, preview_every=2, preview_views=2, preview_steps=1), progress=False)


def _params(module):
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


# ------------------------------------------------------------------------------------------ recipe
def test_frozen_parts_bit_identical_and_trainable_parts_moved(trained, tiny_weights):
    model, fresh = trained.model, _fresh(tiny_weights)
    assert trained.final_step == 2 and len(trained.losses) == 2
    for name in ("unet", "appearance", "pose_controlnet", "vae"):
        assert _same(_params(getattr(model, name)), _params(getattr(fresh, name))), f"frozen {name} changed"
        assert not any(p.requires_grad for p in getattr(model, name).parameters())
    # the style module started as a copy of the content module (§3.2) and moved; so did the temporal modules
    style, content = _params(model.style_appearance), _params(fresh.appearance)
    assert style.keys() == content.keys()
    assert not _same(style, content)
    moved = [k for k in content if not torch.equal(style[k], content[k])]
    assert len(moved) > 0.5 * len(content)
    temporal, temporal0 = _params(model.temporal), _params(fresh.temporal)
    assert not _same(temporal, temporal0)


def test_outputs_written(trained):
    out = trained.out
    assert trained.module_path == out / "style_module.safetensors"
    appearance, temporal, metadata = read_trained_module(trained.module_path)
    assert all(k.startswith("unet.") for k in appearance) and temporal
    assert metadata["diffstyle360_component"] == "style_appearance"
    info = training_settings(metadata)
    assert info["pairing"] == "paper" and info["mask_mode"] == "paper" and info["mode"] == "style_module"
    assert info["steps"] == 2 and info["mixed_precision"] == "no"
    assert json.loads((out / "style_module.json").read_text()) == info
    assert (out / "previews" / "step_000002.png").is_file()
    assert any((out / "logs").rglob("events.out.tfevents.*"))
    checkpoint = out / "checkpoints" / "step_000002"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["optimizer.safetensors", "rng_0.safetensors",
                                                              "state.json", "trainable.safetensors"]
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["step"] == 2 and state["processes"] == 1
    assert state["fingerprint"]["recipe"]["learning_rate"] == 1e-3 and state["fingerprint"]["recipe"]["seed"] == 0
    assert json.loads((out / "run.json").read_text())["fingerprint"] == state["fingerprint"]


def test_loss_goes_down_when_overfitting_one_sample(tiny_weights, data):
    model = _fresh(tiny_weights)
    params = prepare_model(model, "style_module")
    step = StyleTrainingStep(model, TrainConfig(views_per_sample=VIEWS))
    item = StylizationDataset(validate_dataset(data, views_per_sample=VIEWS), 64, VIEWS)[(0, 0)]
    generator = step_generator(0, 0)
    content, style, target, hints = encode_batch(model, item, generator, "cpu")
    _, noise, _ = draw_randomness(generator, target.shape, 1000, 0.0)
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(4):
        loss = step(content, style, target, hints, 500, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0], losses


def test_noise_follows_the_inference_schedule(tiny_weights):
    model = _fresh(tiny_weights)
    prepare_model(model, "style_module")
    step = StyleTrainingStep(model, TrainConfig(views_per_sample=VIEWS))
    s = model.config.schedule
    betas = torch.linspace(s.beta_start ** 0.5, s.beta_end ** 0.5, s.num_train_timesteps, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)  # LDM "linear" schedule (facts §1), computed here independently
    x0, eps = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(2, 4, 8, 8, dtype=torch.float64)
    for t in (0, 1, 500, 999):
        want = abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * eps
        torch.testing.assert_close(step.noisy(x0.float(), eps.float(), t).double(), want, atol=1e-5, rtol=1e-5)


def test_condition_dropout_is_the_unconditional_branch(tiny_weights, data):
    """drop=True: no references and no pose control (the CFG uncond branch); the style module gets no gradient."""
    model = _fresh(tiny_weights)
    prepare_model(model, "style_module")
    step = StyleTrainingStep(model, TrainConfig(views_per_sample=VIEWS))
    g = torch.Generator().manual_seed(0)
    target, noise = torch.randn(VIEWS, 4, 8, 8, generator=g), torch.randn(VIEWS, 4, 8, 8, generator=g)
    refs = [torch.randn(2, 4, 8, 8, generator=g) for _ in range(4)]
    hints = [torch.rand(VIEWS, 3, 64, 64, generator=g) * 2 - 1 for _ in range(2)]
    with torch.no_grad():
        dropped = [step(refs[0], refs[1], target, hints[0], 300, noise, True),
                   step(refs[2], refs[3], target, hints[1], 300, noise, True)]
        kept = [step(refs[0], refs[1], target, hints[0], 300, noise, False),
                step(refs[0], refs[3], target, hints[0], 300, noise, False)]
        plain = torch.nn.functional.mse_loss(
            model.predict_noise(step.noisy(target, noise, 300), 300, None, num_views=VIEWS, references=None), noise)
    assert torch.equal(dropped[0], dropped[1]) and torch.equal(dropped[0], plain)
    assert not torch.equal(kept[0], kept[1])  # the style reference matters when not dropped
    step(refs[0], refs[1], target, hints[0], 300, noise, True).backward()
    assert all(p.grad is None for p in model.style_appearance.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.temporal.parameters())


def test_gradient_checkpointing_keeps_gradients(tiny_weights):
    from diffstyle360_core.training.grad_checkpoint import (disable_gradient_checkpointing,
                                                            enable_gradient_checkpointing)

    model = _fresh(tiny_weights)
    params = prepare_model(model, "style_module")
    step = StyleTrainingStep(model, TrainConfig(views_per_sample=VIEWS))
    g = torch.Generator().manual_seed(1)
    args = (torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g),
            torch.randn(VIEWS, 4, 8, 8, generator=g), torch.rand(VIEWS, 3, 64, 64, generator=g) * 2 - 1, 400,
            torch.randn(VIEWS, 4, 8, 8, generator=g))

    def grads():
        loss = step(*args)
        loss.backward()
        out = [None if p.grad is None else p.grad.clone() for p in params]  # unused tail layers: None
        for p in params:
            p.grad = None
        return loss.detach(), out

    loss0, plain = grads()
    regions = enable_gradient_checkpointing(model, "style_module")
    assert any("attentions" in r for r in regions) and any(r.startswith("temporal") for r in regions)
    assert "style_appearance" in regions
    loss1, checkpointed = grads()
    disable_gradient_checkpointing(model)
    torch.testing.assert_close(loss1, loss0, rtol=1e-6, atol=1e-7)
    assert sum(g is not None for g in plain) > 0.9 * len(plain)
    for a, b in zip(checkpointed, plain):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


# -------------------------------------------------------------------------------- resume
def test_resumed_run_continues_from_the_saved_step(trained, tiny_weights, data, tmp_path):
    from diffstyle360_core.cli.main import main

    resumed = tmp_path / "resumed"
    # step 1 through the CLI (flags), then resume to step 2 through the function; `trained` ran both steps at once
    assert main(["train", "--weights", str(tiny_weights), "--data", str(data), "--out", str(resumed), "--steps", "1",
                 "--views", str(VIEWS), "--lr", "1e-3", "--preview-every", "0", "--device", "cpu", "--quiet"]) == 0
    assert (resumed / "checkpoints" / "step_000001").is_dir()
    second = train(_config(tiny_weights, data, resumed, resume="latest"), progress=False)
    assert (second.start_step, second.final_step, len(second.losses)) == (1, 2, 1)
    assert trained.losses[1] == pytest.approx(second.losses[0], rel=1e-6)
    for name in ("style_appearance", "temporal"):
        a, b = _params(getattr(second.model, name)), _params(getattr(trained.model, name))
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-8, msg=f"{name}.{k}")
    # the saved state at step 2 agrees too: weights and AdamW moments (1 + 1 steps vs 2 steps; different code
    # paths, so within float32 rounding: rtol 1e-6; step counters exactly)
    from safetensors.torch import load_file

    for name in ("trainable.safetensors", "optimizer.safetensors"):
        a = load_file(str(resumed / "checkpoints" / "step_000002" / name))
        b = load_file(str(trained.out / "checkpoints" / "step_000002" / name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-8, msg=f"{name}: {k}")


def test_random_states_round_trip_through_tensors():
    """What a checkpoint stores of torch, Python and NumPy randomness restores them exactly (same path twice)."""
    import random

    import numpy as np

    from diffstyle360_core.training.resume import restore_rng, rng_tensors

    random.gauss(0, 1)  # Python keeps a spare Gaussian: it must survive the round trip too
    saved = rng_tensors()

    def draws():
        return (torch.rand(5), random.random(), random.gauss(0, 1), np.random.rand(3), np.random.randn(2))

    first = draws()
    restore_rng(saved)
    second = draws()
    assert torch.equal(first[0], second[0]) and first[1:3] == second[1:3]
    assert np.array_equal(first[3], second[3]) and np.array_equal(first[4], second[4])


# ----------------------------------------------------------------------------- inference
def _turntable(model, data, tiny_weights):
    from diffstyle360_core.cameras import select_views, load_condition_set
    from diffstyle360_core.pipeline import DiffStyle360Pipeline

    cams = select_views(load_condition_set(tiny_weights / "cam_condition" / "sphere32", 64), views=2)
    pipe = DiffStyle360Pipeline(model, None, cams)
    sample = data / "sample_000"
    from diffstyle360_core.pipeline import Style

    style = Style(images=[sample / "style" / "front.png"], backs=[sample / "style" / "back.png"])
    return pipe.stylize(sample / "content" / "front.png", style, content_back=sample / "content" / "back.png",
                        steps=2, cfg=1.0, seed=3).views


def test_checkpoint_loads_into_the_pipeline_and_changes_its_output(trained, tiny_weights, data):
    base = _fresh(tiny_weights)
    loaded = load_trained_module(base, trained.module_path)
    assert base.style_appearance is None  # the base model is not changed
    assert loaded.unet is base.unet and loaded.vae is base.vae  # frozen parts shared
    assert _same(_params(loaded.style_appearance), _params(trained.model.style_appearance))
    assert _same(_params(loaded.temporal), _params(trained.model.temporal))
    untrained = _fresh(tiny_weights)
    untrained.add_style_module()  # the recipe's starting point: a copy of the content module
    with torch.no_grad():
        before = _turntable(untrained, data, tiny_weights)
        after = _turntable(loaded, data, tiny_weights)
    assert before.shape == after.shape == (2, 3, 64, 64)
    assert float((before - after).abs().max()) > 1e-3


def test_weights_load_style_module_reads_the_trained_file(trained, tiny_weights):
    from diffstyle360_core.weights import load_style_module

    loaded = load_style_module(_fresh(tiny_weights), trained.module_path)
    assert _same(_params(loaded.style_appearance), _params(trained.model.style_appearance))
    assert _same(_params(loaded.temporal), _params(trained.model.temporal))


def test_finetune_appearance_mode_trains_the_shared_module(tiny_weights, data, tmp_path):
    result = train(_config(tiny_weights, data, tmp_path, mode="finetune_appearance", steps=1), progress=False)
    model, fresh = result.model, _fresh(tiny_weights)
    assert model.style_appearance is None and model.training_free
    assert not _same(_params(model.appearance), _params(fresh.appearance))
    assert not _same(_params(model.temporal), _params(fresh.temporal))
    for name in ("unet", "pose_controlnet", "vae"):
        assert _same(_params(getattr(model, name)), _params(getattr(fresh, name)))
    assert result.module_path.name == "appearance_module.safetensors"
    _, _, metadata = read_trained_module(result.module_path)
    assert metadata["diffstyle360_component"] == "appearance"
    loaded = load_trained_module(fresh, result.module_path)
    assert loaded.style_appearance is None
    assert _same(_params(loaded.appearance), _params(model.appearance))


# ------------------------------------------------------------------------- data and config
def test_invalid_dataset_reports_every_problem(tmp_path, tiny_weights, capsys):
    from PIL import Image

    from diffstyle360_core.cli.main import main

    root = make_tiny_dataset(tmp_path / "bad", samples=3, views=4)
    (root / "sample_000" / "style" / "back.png").unlink()  # missing reference
    Image.new("RGB", (48, 48)).save(root / "sample_000" / "target" / "001.png")  # size mismatch
    broken = root / "sample_001" / "target" / "002.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated: unreadable
    (root / "sample_002" / "cam" / "003.png").unlink()  # target without camera condition
    (root / "sample_003").mkdir()  # empty sample folder
    with pytest.raises(DatasetError) as err:
        validate_dataset(root, views_per_sample=4)
    problems = err.value.problems
    text = str(err.value)
    expected = ["sample_000: missing style/back.png", "sample_000: size mismatch: target/001.png is 48x48",
                "sample_001: cannot read target/002.png", "sample_002: target/003 has no camera condition",
                "sample_003: missing content/front.png", "sample_003: missing folder target/"]
    for line in expected:
        assert any(p.startswith(line) for p in problems), (line, problems)
        assert line in text
    # too few views for the step is reported too
    with pytest.raises(DatasetError, match="a step takes 16 distinct views"):
        validate_dataset(make_tiny_dataset(tmp_path / "short", samples=1, views=4))
    # the CLI prints the report, not a traceback, and fails before loading the model
    code = main(["train", "--weights", str(tiny_weights), "--data", str(root), "--out", str(tmp_path / "o"),
                 "--views", "4", "--steps", "1"])
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.err and "sample_002: target/003" in captured.err
    assert main(["train", "--weights", str(tiny_weights), "--data", str(tmp_path / "nowhere"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_config_yaml_and_flag_overrides(tmp_path):
    from diffstyle360_core.cli.train import config_from_args, register
    import argparse

    cfg = TrainConfig()
    assert (cfg.steps, cfg.learning_rate, cfg.views_per_sample, cfg.mode) == (800, 1e-5, 16, "style_module")
    path = tmp_path / "c.yaml"
    path.write_text("steps: 40\npairing: aligned\nlearning_rate: 2e-5\ndata: /d\n")  # YAML 1.1: 2e-5 is a string
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--config", str(path), "--steps", "5", "--out", "/o"])
    cfg = config_from_args(args)
    assert (cfg.steps, cfg.pairing, cfg.learning_rate, cfg.data, cfg.out) == (5, "aligned", 2e-5, "/d", "/o")
    path.write_text("stpes: 3\n")
    with pytest.raises(ConfigError, match="unknown setting.*stpes"):
        TrainConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="pairing"):
        TrainConfig(pairing="diagonal").checked()
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig(learning_rate=-1).checked()
    with pytest.raises(ConfigError, match="needs weights, data, out"):
        train(TrainConfig(), progress=False)


def test_trained_pairing_is_the_default_and_an_explicit_choice_wins(trained, tiny_weights, monkeypatch):
    import diffstyle360_core.pipeline as pipeline_module
    from diffstyle360_core.weights import load_style_module

    model = load_style_module(_fresh(tiny_weights), trained.module_path)
    assert model.style_module_settings["pairing"] == "paper"
    model.style_module_settings = {**model.style_module_settings, "pairing": "aligned", "mask_mode": "confined"}
    seen = []
    real = pipeline_module.FusionSettings.checked
    monkeypatch.setattr(pipeline_module.FusionSettings, "checked",
                        lambda self, **kw: seen.append((self.pairing, self.mask_mode)) or real(self, **kw))
    pipe = pipeline_module.DiffStyle360Pipeline(model, None, load_cameras(tiny_weights, 64))
    image = torch.rand(1, 64, 64, 3)
    style = pipeline_module.Style(images=[image], backs=[image])
    pipe.stylize(image, style, content_back=image, views=1, steps=1)
    pipe.stylize(image, style, content_back=image, views=1, steps=1, pairing="paper")
    assert seen[0] == ("aligned", "confined") and ("paper", "confined") in seen
