"""The bank-writer / Style Fusion reader processors on a tiny diffusers UNet."""

import pytest
import torch
from sfa_reference import ref_attention, ref_kv
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from diffstyle360_core.attention import (
    FusionCall,
    FusionSlot,
    ReferenceBank,
    StyleEntry,
    install_bank_writers,
    install_fusion_readers,
    mask_to_tokens,
    self_attention_names,
)
from diffstyle360_core.config import tiny_config
from diffstyle360_core.fusion import blend_styles, reference_attention_inputs
from diffstyle360_core.options import FusionSettings


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return UNet2DConditionModel(**tiny_config().unet).eval()


def _run(unet, x, ctx):
    with torch.no_grad():
        return unet(x, 7, encoder_hidden_states=ctx).sample


def test_reader_without_references_is_the_stock_processor_exactly():
    unet = tiny_unet()
    x, ctx = torch.randn(3, 4, 8, 8), torch.randn(3, 77, 32)
    unet.set_attn_processor(AttnProcessor2_0())
    stock = _run(unet, x, ctx)
    slot = FusionSlot()
    names = install_fusion_readers(unet, slot)
    assert len(names) == 16
    # our reader and diffusers' AttnProcessor2_0 are two code paths: equal within float32 rounding
    torch.testing.assert_close(_run(unet, x, ctx), stock, rtol=1e-5, atol=1e-6)
    # a call with no references (CFG unconditional branch) is also the stock UNet
    slot.bind(FusionCall())
    torch.testing.assert_close(_run(unet, x, ctx), stock, rtol=1e-5, atol=1e-6)


def test_writer_records_post_norm1_states_of_all_16_layers_and_keeps_output():
    unet = tiny_unet()
    x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    unet.set_attn_processor(AttnProcessor2_0())
    stock = _run(unet, x, ctx)
    bank = ReferenceBank()
    names = install_bank_writers(unet, bank)
    seen = {}
    hooks = [
        dict(unet.named_modules())[n.rsplit(".", 1)[0]].norm1.register_forward_hook(
            lambda m, i, o, n=n: seen.__setitem__(n, o)
        )
        for n in names
    ]
    bank.recording = True
    out = _run(unet, x, ctx)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(out, stock, rtol=1e-5, atol=1e-6)  # writer vs stock processor: float32 rounding
    assert list(bank.features) == names  # forward order, paired by name
    for n in names:
        assert torch.equal(bank.features[n], seen[n])
    tokens = [bank.features[n].shape[1] for n in names]
    assert tokens == [64, 64, 16, 16, 4, 4, 1, 4, 4, 4, 16, 16, 16, 64, 64, 64]


def _reference_banks(names, unet, batch=1, tokens_scale=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    mods = dict(unet.named_modules())
    out = {}
    for n in names:  # front+back tokens at the layer's resolution
        ch = mods[n].to_k.in_features
        out[n] = torch.randn(batch, tokens_scale * _tokens(n), ch, generator=g)
    return out


def _tokens(name):
    table = {
        "down_blocks.0": 64, "down_blocks.1": 16, "down_blocks.2": 4, "mid_block": 1,
        "up_blocks.1": 4, "up_blocks.2": 16, "up_blocks.3": 64,
    }
    return next(v for k, v in table.items() if name.startswith(k))


def test_reader_matches_functional_sfa_on_every_layer_with_tau_mask_and_blend():
    unet = tiny_unet()
    slot = FusionSlot()
    names = install_fusion_readers(unet, slot)
    content = _reference_banks(names, unet, seed=1)
    style1 = _reference_banks(names, unet, seed=2)
    style2 = _reference_banks(names, unet, seed=3)
    mask = torch.zeros(2, 64, 64)
    mask[0, 16:48, 8:40] = 1.0
    taus = {n: 1.0 + 0.01 * i for i, n in enumerate(names)}  # a different τ per layer
    slot.bind(FusionCall(content, [StyleEntry(banks=[style1, style2], weights=[0.7, 0.3], mask=mask)],
                         FusionSettings(tau=taus, pairing="aligned")))

    x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    mods = dict(unet.named_modules())
    outputs = {}
    hooks = [mods[n].register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, (i[0], o))) for n in names]
    _run(unet, x, ctx)
    for h in hooks:
        h.remove()
    assert list(outputs) == names  # every layer ran with its own slots
    with torch.no_grad():
        for name in names:
            attn, reader = mods[name], mods[name].processor
            k_c, v_c = attn.to_k(content[name]), attn.to_v(content[name])
            k_s = blend_styles([attn.to_k(style1[name]), attn.to_k(style2[name])], [0.7, 0.3])
            v_s = blend_styles([attn.to_v(style1[name]), attn.to_v(style2[name])], [0.7, 0.3])
            m = mask_to_tokens(mask, k_s.shape[1])
            assert float(m.max()) > 0.2 and float(m[0, k_s.shape[1] // 2 :].max()) == 0.0  # back plane empty
            # what the layer holds is the functional SFA input built with this layer's τ, pairing and mask
            expect = reference_attention_inputs(k_c, v_c, [(k_s, v_s, m)], tau=taus[name], pairing="aligned")
            assert torch.allclose(reader.inputs.k, expect.k, atol=1e-6)
            assert torch.allclose(reader.inputs.v, expect.v, atol=1e-6)
            hidden, got = outputs[name]
            # and its output is the float64 equations' (float32 layer: atol 1e-5 on O(1) outputs)
            K, V = ref_kv(attn.to_k(hidden), attn.to_v(hidden), k_c, v_c, [(k_s, v_s, m)], taus[name], "aligned")
            ref = ref_attention(attn.to_q(hidden), K, V, attn.heads)
            torch.testing.assert_close(got, attn.to_out[0](ref.float()), rtol=0, atol=1e-5)


def test_reader_output_equals_the_equations():
    unet = tiny_unet()
    slot = FusionSlot()
    names = install_fusion_readers(unet, slot)
    content = _reference_banks(names, unet, seed=1)
    style = _reference_banks(names, unet, seed=2)
    slot.bind(FusionCall(content, [StyleEntry(banks=[style])], FusionSettings(tau=1.05)))
    name = names[3]
    attn = dict(unet.named_modules())[name]
    h = torch.randn(2, _tokens(name), attn.to_q.in_features)
    with torch.no_grad():
        got = attn(h)
        q, k, v = attn.to_q(h), attn.to_k(h), attn.to_v(h)
        styles = [(attn.to_k(style[name]), attn.to_v(style[name]), None)]
        K, V = ref_kv(k, v, attn.to_k(content[name]), attn.to_v(content[name]), styles, 1.05, "paper")
        ref = attn.to_out[0](ref_attention(q, K, V, attn.heads).float())
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)  # float32 layer vs float64 equations


def test_reference_slots_are_cached_per_call_and_released():
    unet = tiny_unet()
    slot = FusionSlot()
    names = install_fusion_readers(unet, slot)
    attn = dict(unet.named_modules())[names[0]]
    call = FusionCall(_reference_banks(names, unet, seed=1))
    first = call.reference_kv(names[0], attn)
    assert call.reference_kv(names[0], attn) is first
    other = FusionCall(_reference_banks(names, unet, seed=2))
    assert not torch.equal(other.reference_kv(names[0], attn).k, first.k)
    slot.bind(call)
    assert attn.processor.inputs is first and slot.call is call
    slot.release()
    assert slot.call is None and all(reader.inputs is None for _, _, reader in slot.readers)


def test_per_resolution_tau_reaches_the_layers_of_that_resolution():
    from diffstyle360_core.options import tau_by_resolution

    names = self_attention_names(tiny_unet())
    settings = FusionSettings(tau=tau_by_resolution(1.05, {0: 1.2, 3: 0.9})).checked()
    by_name = {n: settings.tau_for(n) for n in names}
    assert by_name["down_blocks.0.attentions.0.transformer_blocks.0.attn1"] == 1.2
    assert by_name["up_blocks.3.attentions.2.transformer_blocks.0.attn1"] == 1.2
    assert by_name["mid_block.attentions.0.transformer_blocks.0.attn1"] == 0.9
    assert by_name["down_blocks.1.attentions.0.transformer_blocks.0.attn1"] == 1.05
    assert sorted(set(by_name.values())) == [0.9, 1.05, 1.2]


def test_mask_to_tokens_area_resizes_each_view_plane():
    mask = torch.zeros(2, 8, 8)
    mask[0, :4, :4] = 1.0
    mask[1, :, :] = 0.5
    tokens = mask_to_tokens(mask, 2 * 4)  # 2x2 grid per view
    assert torch.allclose(tokens, torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5]]))
    with pytest.raises(ValueError, match="aspect"):
        mask_to_tokens(torch.ones(2, 8, 6), 2 * 4)


def test_names_are_layer_paths():
    names = self_attention_names(tiny_unet())
    assert names[0] == "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    assert names[6] == "mid_block.attentions.0.transformer_blocks.0.attn1"
    assert names[-1] == "up_blocks.3.attentions.2.transformer_blocks.0.attn1"
