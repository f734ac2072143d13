"""SAM attention recomputing its relative-position bias in backward, windowed blocks running qkv/proj on the image's
tokens only: same results, less stored."""
import snella_seg  # noqa: F401  (installs the mmcv ops stand-in before mmseg's backbones import)
import pytest
import torch
from timm.models import vision_transformer_sam

from estimate_memory import LiveTensorMemory
from snella_seg.models.backbones import TimmViT
from snella_seg.models.backbones.sam_attention import (BiasRecomputingAttention, WindowedQkvBlock,
                                                       decomposed_rel_pos_bias)

from tests.helpers.tiny_archs import TINY_SAM


def backbone(efficient: bool, drop_path_rate: float = 0.0) -> TimmViT:
    torch.manual_seed(0)
    model = TimmViT(TINY_SAM, img_size=80, out_indices=(1, 3), efficient_sam_blocks=efficient,
                    drop_path_rate=drop_path_rate)
    with torch.no_grad():
        for block in model.model.blocks:  # the tables and qkv's bias start at zero: make them matter
            block.attn.rel_pos_h.normal_()
            block.attn.rel_pos_w.normal_()
            block.attn.qkv.bias.normal_()
    return model.train()


def test_every_sam_attention_and_windowed_block_is_converted_in_place():
    model = backbone(True)
    assert all(type(b.attn) is BiasRecomputingAttention for b in model.model.blocks)
    assert [type(b) is WindowedQkvBlock for b in model.model.blocks] == [True, False, True, False]  # 1, 3: global
    assert list(model.state_dict()) == list(backbone(False).state_dict())


def test_windowed_qkv_and_proj_see_only_the_image_tokens():
    model = backbone(True)
    seen = []
    for layer in (model.model.blocks[0].attn.qkv, model.model.blocks[0].attn.proj):
        layer.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[:-1].numel()))
    model(torch.randn(2, 3, 80, 80))
    assert seen == [2 * 5 * 5] * 2  # timm's block: 2 images x 9 windows x 2 x 2 = 72 tokens


# 80x80: 5x5 tokens, padded 2x2 windows. 97x130: padded to 7x9 whole patches, and the global blocks' 5x5 tables
# (img_size 80) interpolated to that grid.
@pytest.mark.parametrize('size', [(80, 80), (97, 130)], ids=str)
def test_same_features_and_gradients_as_timm_attention(size):
    images = torch.randn(2, 3, *size)

    def run(model):
        outputs = model(images)
        sum(o.square().mean() for o in outputs).backward()
        return [o.detach() for o in outputs] + [p.grad for p in model.parameters()]

    for got, expected in zip(run(backbone(True)), run(backbone(False))):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_stochastic_depth_drops_whole_windows_as_timm_does():
    images = torch.randn(2, 3, 80, 80)
    outputs = []
    for efficient in (True, False):
        model = backbone(efficient, drop_path_rate=0.5)
        torch.manual_seed(1)
        outputs.append(model(images))
    for got, expected in zip(*outputs):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_the_bias_is_not_stored_for_backward():
    images = torch.randn(2, 3, 80, 80)

    def stored(recompute: bool) -> int:
        model = backbone(recompute)
        tracker = LiveTensorMemory()
        with tracker:
            outputs = model(images)  # alive now: the outputs and what autograd saved
        assert outputs[0].requires_grad
        return tracker.current

    assert stored(True) < stored(False)


def test_attention_kinds_it_does_not_reproduce_are_left_alone():
    attention = vision_transformer_sam.Attention(dim=16, num_heads=2, use_rel_pos=True, input_size=(4, 4),
                                                 attn_drop=0.1)
    assert not BiasRecomputingAttention.convert(attention)
    assert type(attention) is vision_transformer_sam.Attention


def test_same_features_under_bf16_autocast():
    images = torch.randn(2, 3, 80, 80)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        got, expected = backbone(True).eval()(images), backbone(False).eval()(images)
    for a, b in zip(got, expected):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


def test_window_padding_is_what_qkv_gives_a_zero_token_in_the_output_dtype():
    block = backbone(True).model.blocks[0]  # 2x2 windows
    qkv = torch.randn(1, 5, 5, block.attn.qkv.out_features).to(torch.bfloat16)
    padded = block._pad_with_bias(qkv)
    assert padded.shape == (1, 6, 6, qkv.shape[-1]) and padded.dtype == torch.bfloat16
    assert torch.equal(padded[:, :5, :5], qkv)
    with torch.no_grad():
        zero_token = block.attn.qkv(torch.zeros(1, block.attn.qkv.in_features))
    assert torch.equal(padded[0, 5], zero_token.to(torch.bfloat16).expand(6, -1))
    assert torch.equal(padded[0, :, 5], zero_token.to(torch.bfloat16).expand(6, -1))


@pytest.mark.parametrize('size', [(4, 4), (3, 5)])
def test_rel_pos_bias_equals_timm_bit_for_bit_without_a_copy(size):
    q = torch.randn(6, size[0] * size[1], 8, requires_grad=True)
    rel_h, rel_w = torch.randn(2 * size[0] - 1, 8), torch.randn(2 * size[1] - 1, 8)
    ours = decomposed_rel_pos_bias(q, rel_h, rel_w, size)
    assert torch.equal(ours, vision_transformer_sam.get_decomposed_rel_pos_bias(q, rel_h, rel_w, size, size))
    assert ours._base is not None and ours.is_contiguous()  # a view of the sum itself: no reshape copy


def test_sdpa_gets_four_dimensional_inputs(monkeypatch):
    """CUDA's memory-efficient and flash kernels take (batch, heads, tokens, dim); 3-D inputs fall back to math."""
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, **kwargs):
        seen.append((q.shape, k.ndim, v.ndim, attn_mask.shape))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention', recording)
    model = backbone(True)
    sum(o.sum() for o in model(torch.randn(2, 3, 80, 80))).backward()
    heads = model.model.blocks[0].attn.num_heads
    assert seen and all(len(q) == 4 and q[:2] in ((2, heads), (2 * 9, heads)) and k == v == 4 and len(mask) == 4
                        and mask[:2] == q[:2] and mask[2:] == (q[2], q[2]) for q, k, v, mask in seen)
