"""The assembled backbone on tiny configs: shapes, placement, control, banks, training-free mode."""

import copy

import pytest
import torch

from diffstyle360_core.attention import FusionCall, StyleEntry
from diffstyle360_core.options import FusionSettings
from diffstyle360_core.config import BACK_VIEW, MAIN, tiny_config
from diffstyle360_core.model import DiffStyle360Model
from diffstyle360_core.unet_walk import walk_unet


def _perturb(model, seed=0, scale=0.02):
    """Random non-zero weights everywhere (zero-initialised layers would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


@pytest.fixture(scope="module")
def main_model():
    torch.manual_seed(0)
    return _perturb(DiffStyle360Model(tiny_config(MAIN))).eval()


def test_walk_without_insertions_is_the_stock_unet(main_model):
    unet = main_model.unet
    x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    with torch.no_grad():
        ours, stock = walk_unet(unet, x, 5, ctx), unet(x, 5, encoder_hidden_states=ctx).sample
    # two code paths (our walk, diffusers' forward): equal within float32 rounding, not bit for bit on every CPU
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-6)


def test_control_residuals_match_diffusers_controlnet_path(main_model):
    x, hint = torch.randn(2, 4, 8, 8), torch.rand(2, 3, 64, 64) * 2 - 1
    ctx = main_model.text_embedding + torch.randn(1, 77, 32)
    with torch.no_grad():
        control = main_model.pose_controlnet(x, 9, ctx, hint)
        assert len(control.down) == 12
        ours = walk_unet(main_model.unet, x, 9, ctx, control=control)
        stock = main_model.unet(
            x, 9, encoder_hidden_states=ctx.expand(2, -1, -1), down_block_additional_residuals=control.down,
            mid_block_additional_residual=control.mid,
        ).sample
    assert torch.allclose(ours, stock, atol=1e-6)


def test_reference_banks_have_16_layers_with_front_and_back_tokens(main_model):
    content, style = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        cb, sb = main_model.reference_banks(content, [style], 41)
    assert len(cb) == 16 and len(sb) == 1 and list(cb) == main_model.attention_layers
    per_view = [64, 64, 16, 16, 4, 4, 1, 4, 4, 4, 16, 16, 16, 64, 64, 64]
    channels = [32, 32, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 32, 32, 32]
    for (name, feat), tokens, ch in zip(cb.items(), per_view, channels):
        assert feat.shape == (1, 2 * tokens, ch), name
        assert sb[0][name].shape == feat.shape
    # the bank depends on t (same t as the main UNet), not only on the image
    with torch.no_grad():
        other, _ = main_model.reference_banks(content, [], 901)
    assert not torch.allclose(other[main_model.attention_layers[0]], cb[main_model.attention_layers[0]])


def test_front_back_tokens_are_concatenated_in_order(main_model):
    front, back = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        both, _ = main_model.reference_banks(torch.cat([front, back]), [], 11)
        only_front, _ = main_model.reference_banks(front, [], 11)
        only_back, _ = main_model.reference_banks(back, [], 11)
    for name in both:
        assert torch.allclose(both[name], torch.cat([only_front[name], only_back[name]], 1), atol=1e-5)


def test_temporal_modules_sit_where_the_official_model_has_them(main_model):
    seen = []
    hooks = []
    for group in ("down", "up"):
        for i, module in enumerate(main_model.temporal[group]):
            hooks.append(module.register_forward_hook(
                lambda m, inp, out, g=group, i=i: seen.append((g, i, tuple(inp[0].shape[1:])))))
    x = torch.randn(4, 4, 8, 8)
    with torch.no_grad():
        main_model.predict_noise(x, 3, torch.zeros(4, 3, 64, 64), num_views=4, references=FusionCall())
    for h in hooks:
        h.remove()
    down = [s[2] for s in seen if s[0] == "down"]
    up = [s[2] for s in seen if s[0] == "up"]
    assert down == [(32, 8, 8), (32, 8, 8), (64, 4, 4), (64, 4, 4), (64, 2, 2), (64, 2, 2), (64, 1, 1), (64, 1, 1)]
    # decoder: one after every layer; layers 2, 5, 8 run after the upsampler (doubled resolution)
    assert up == [(64, 1, 1), (64, 1, 1), (64, 2, 2), (64, 2, 2), (64, 2, 2), (64, 4, 4),
                  (64, 4, 4), (64, 4, 4), (64, 8, 8), (32, 8, 8), (32, 8, 8), (32, 8, 8)]


def test_views_interact_only_inside_a_window(main_model):
    """Temporal attention mixes views of one window; separate windows are independent."""
    x = torch.randn(4, 4, 8, 8)
    hint = torch.rand(4, 3, 64, 64) * 2 - 1
    call = FusionCall()  # pose control, no references
    with torch.no_grad():
        pair = main_model.predict_noise(x, 7, hint, num_views=2, references=call)  # windows {0,1} and {2,3}
        first = main_model.predict_noise(x[:2], 7, hint[:2], num_views=2, references=call)
        x2 = x.clone()
        x2[3] += 1.0
        changed = main_model.predict_noise(x2, 7, hint, num_views=2, references=call)
        joint = main_model.predict_noise(x2, 7, hint, num_views=4, references=call)
    assert torch.allclose(pair[:2], first, atol=1e-5)
    assert torch.allclose(changed[:2], pair[:2], atol=1e-6)
    assert not torch.allclose(joint[:2], pair[:2], atol=1e-4)


def test_unconditional_branch_drops_references_and_pose(main_model):
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        cb, _ = main_model.reference_banks(torch.randn(2, 4, 8, 8), [], 21)
        hint = torch.rand(2, 3, 64, 64)
        uncond = main_model.predict_noise(x, 21, hint, num_views=2, references=None)
        plain = main_model.predict_noise(x, 21, None, num_views=2, references=FusionCall())
        cond = main_model.predict_noise(x, 21, hint, num_views=2, references=FusionCall(cb))
    torch.testing.assert_close(uncond, plain, rtol=1e-5, atol=1e-6)  # two branches of predict_noise: float32 rounding
    assert not torch.allclose(cond, plain)
    assert main_model.fusion.call is None  # nothing of a call stays on the model


def test_training_free_equals_content_module_as_style_module(main_model):
    content, style = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    x = torch.randn(2, 4, 8, 8)
    hint = torch.rand(2, 3, 64, 64) * 2 - 1

    def eps(model):
        with torch.no_grad():
            cb, sb = model.reference_banks(content, [style], 61)
            call = FusionCall(cb, [StyleEntry(banks=sb)], FusionSettings(tau=1.05))
            return model.predict_noise(x, 61, hint, num_views=2, references=call)

    assert main_model.training_free
    free = eps(main_model)
    with_copy = copy.deepcopy(main_model)
    with_copy.add_style_module()
    assert not with_copy.training_free
    assert torch.allclose(eps(with_copy), free, atol=1e-5)
    # a trained (different) style module changes the result
    _perturb(with_copy.style_appearance, seed=5, scale=0.05)
    assert not torch.allclose(eps(with_copy), free, atol=1e-4)


def test_back_view_model_has_no_temporal_modules():
    model = DiffStyle360Model(tiny_config(BACK_VIEW))
    assert model.temporal is None
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert model.predict_noise(x, 1, torch.zeros(1, 3, 64, 64)).shape == x.shape


def test_vae_round_trip_shapes(main_model):
    img = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        z = main_model.encode(img, torch.Generator().manual_seed(0))
        again = main_model.encode(img, torch.Generator().manual_seed(0))
        out = main_model.decode(z, chunk=1)
    assert z.shape == (2, 4, 8, 8) and torch.equal(z, again)
    assert out.shape == img.shape and float(out.abs().max()) <= 1.0


def test_each_reference_goes_through_its_own_module(main_model):
    model = copy.deepcopy(main_model)
    model.add_style_module()
    _perturb(model.style_appearance, seed=9, scale=0.05)
    content, style = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        both_c, both_s = model.reference_banks(content, [style], 101)
        only_c, none = model.reference_banks(content, [], 101)
        no_c, only_s = model.reference_banks(None, [style], 101)
        direct_c = model.appearance(content, 101, model.text_embedding)
        direct_s = model.style_appearance(style, 101, model.text_embedding)
    assert none == [] and no_c is None
    for name in both_c:
        flat_c = torch.cat([direct_c[name][0:1], direct_c[name][1:2]], 1)
        flat_s = torch.cat([direct_s[name][0:1], direct_s[name][1:2]], 1)
        assert torch.allclose(both_c[name], flat_c, atol=1e-5) and torch.allclose(only_c[name], flat_c, atol=1e-5)
        assert torch.allclose(both_s[0][name], flat_s, atol=1e-5) and torch.allclose(only_s[0][name], flat_s, atol=1e-5)
