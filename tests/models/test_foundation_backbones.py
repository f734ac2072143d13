"""Foundation-model encoders in TimmViT, from their official checkpoint layouts.

No independent implementation installs here without downloads (transformers, the dinov2 hub code), so each family is
compared with timm's own model loaded the timm way (its ``checkpoint_filter_fn``). Checkpoints are written by the
tests with random weights in the official key layout of tiny variants (same keys, small width and depth).
"""
from typing import Dict

import snella_seg  # noqa: F401  (registers the components)
import pytest
import timm
import torch
from mmseg.registry import MODELS
from timm.models import eva, vision_transformer

from snella_seg.models.backbones import TimmViT
from snella_seg.models.backbones.families import detect_format

from tests.helpers.absorption import absorbed_module_names, assert_absorption_changes_nothing

WIDTH, DEPTH, GRID = 64, 3, 4  # the checkpoints' tiny encoder: 64-d, 3 blocks, 4x4 position grid
TARGETS = [r'.*blocks\.\d+\.attn\.(qkv|proj)', r'.*blocks\.\d+\.mlp\.fc\d']
DINOV2 = {'dinov2': 'vit_large_patch14_dinov2', 'dinov2-reg4': 'vit_large_patch14_reg4_dinov2'}
DINOV3, EVA02 = 'vit_large_patch16_dinov3', 'eva02_large_patch14_224'
EVA_TARGETS = [r'.*blocks\.\d+\.attn\.(qkv|q_proj|k_proj|v_proj|proj)', r'.*blocks\.\d+\.mlp\.(fc1|fc1_g|fc1_x|fc2)']


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def tiny(timm_name: str) -> Dict:
    return dict(family='vit', timm_name=timm_name, embed_dim=WIDTH, depth=DEPTH, num_heads=2)


def official_dinov2_state(registers: int) -> Dict[str, torch.Tensor]:
    """The key layout of ``dinov2_vitl14[_reg4]_pretrain.pth`` (torch.hub's DinoVisionTransformer), written out by
    hand rather than derived from timm, at a 64-d width, 3 blocks and a 4x4 grid (56 px)."""
    c = WIDTH
    state = {'cls_token': torch.randn(1, 1, c), 'pos_embed': torch.randn(1, 1 + GRID * GRID, c),
             'mask_token': torch.randn(1, c), 'patch_embed.proj.weight': torch.randn(c, 3, 14, 14) * 0.02,
             'patch_embed.proj.bias': torch.randn(c), 'norm.weight': torch.randn(c), 'norm.bias': torch.randn(c)}
    if registers:
        state['register_tokens'] = torch.randn(1, registers, c)
    shapes = {'norm1.weight': (c,), 'norm1.bias': (c,), 'attn.qkv.weight': (3 * c, c), 'attn.qkv.bias': (3 * c,),
              'attn.proj.weight': (c, c), 'attn.proj.bias': (c,), 'ls1.gamma': (c,), 'norm2.weight': (c,),
              'norm2.bias': (c,), 'mlp.fc1.weight': (4 * c, c), 'mlp.fc1.bias': (4 * c,),
              'mlp.fc2.weight': (c, 4 * c), 'mlp.fc2.bias': (c,), 'ls2.gamma': (c,)}
    for block in range(DEPTH):
        state.update({f'blocks.{block}.{key}': torch.randn(shape) * 0.1 for key, shape in shapes.items()})
    return state


def timm_loaded(timm_name: str, state: Dict[str, torch.Tensor], img_size: int) -> torch.nn.Module:
    """timm's own model, loaded the timm way: its checkpoint filter, then a strict load."""
    model = timm.create_model(timm_name, pretrained=False, img_size=img_size, embed_dim=WIDTH, depth=DEPTH,
                              num_heads=2, num_classes=0, dynamic_img_size=True)
    model.load_state_dict(vision_transformer.checkpoint_filter_fn(dict(state), model))
    return model.eval()


def loaded(arch, path, **kwargs) -> TimmViT:
    backbone = TimmViT(arch, pretrained=str(path), **kwargs)
    backbone.init_weights()
    return backbone.eval()


@pytest.mark.parametrize('variant,registers', [('dinov2', 0), ('dinov2-reg4', 4)])
def test_official_dinov2_checkpoint_gives_timms_dinov2_features(tmp_path, variant, registers):
    state = official_dinov2_state(registers)
    torch.save(state, tmp_path / 'dinov2.pth')
    reference = timm_loaded(DINOV2[variant], state, img_size=14 * GRID)
    ours = loaded(tiny(DINOV2[variant]), tmp_path / 'dinov2.pth', img_size=14 * GRID, out_indices=(0, 2))
    images = torch.randn(2, 3, 14 * GRID, 14 * GRID)
    with torch.no_grad():
        expected = reference.forward_intermediates(images, indices=[0, 2], intermediates_only=True)
        for got, want in zip(ours(images), expected, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_dinov2_in_timms_layout_loads_too(tmp_path):
    reference = timm_loaded(DINOV2['dinov2-reg4'], official_dinov2_state(4), img_size=14 * GRID)
    torch.save(reference.state_dict(), tmp_path / 'timm.pth')
    ours = loaded(tiny(DINOV2['dinov2-reg4']), tmp_path / 'timm.pth', img_size=14 * GRID, out_indices=(2,))
    images = torch.randn(1, 3, 14 * GRID, 14 * GRID)
    with torch.no_grad():
        torch.testing.assert_close(ours(images)[0], reference.forward_intermediates(
            images, indices=[2], intermediates_only=True)[0], atol=1e-5, rtol=0)


def test_official_dinov2_keys_are_detected():
    assert detect_format(official_dinov2_state(0)) == 'dinov2'
    assert detect_format(official_dinov2_state(4)) == 'dinov2'


@pytest.mark.parametrize('change,expected', [
    (lambda state: state.pop('blocks.1.ls2.gamma'), r'missing from the checkpoint \(1\): blocks\.1\.ls2\.gamma'),
    (lambda state: state.update({'blocks.1.attn.extra': torch.zeros(1)}),
     r'unexpected in the checkpoint \(1\): blocks\.1\.attn\.extra'),
], ids=['missing', 'unexpected'])
def test_a_dinov2_checkpoint_with_a_missing_or_unexpected_key_is_refused(tmp_path, change, expected):
    state = official_dinov2_state(4)
    change(state)
    torch.save(state, tmp_path / 'dinov2.pth')
    with pytest.raises(ValueError, match=expected):
        loaded(tiny(DINOV2['dinov2-reg4']), tmp_path / 'dinov2.pth', img_size=14 * GRID)


@pytest.mark.parametrize('variant', DINOV2)
def test_dinov2_position_grid_is_resized_from_the_checkpoint_to_the_512_crop(tmp_path, variant):
    torch.save(official_dinov2_state(4 if 'reg' in variant else 0), tmp_path / 'dinov2.pth')
    ours = loaded(tiny(DINOV2[variant]), tmp_path / 'dinov2.pth', img_size=512)
    prefix = 0 if 'reg' in variant else 1  # timm's DINOv2 with registers embeds no prefix positions
    assert ours.model.patch_embed.grid_size == (37, 37)  # 512 px pad to 518 = 37 patches of 14
    assert ours.model.pos_embed.shape == (1, prefix + 37 * 37, WIDTH)


@pytest.mark.parametrize('size,cells', [((512, 512), (37, 37)), ((360, 480), (26, 35)), ((181, 239), (13, 18))])
def test_dinov2_gives_one_cell_per_started_patch_at_any_size(size, cells):
    ours = TimmViT(tiny(DINOV2['dinov2-reg4']), img_size=512, out_indices=(0, 2)).eval()
    with torch.no_grad():
        assert [f.shape for f in ours(torch.randn(1, 3, *size))] == [(1, WIDTH, *cells)] * 2


def snella_dinov2(absorb: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='SNELLABackbone',
        backbone=dict(type='TimmViT', arch=tiny(DINOV2['dinov2-reg4']), img_size=56, out_indices=(1, 2)),
        snella=dict(targets=TARGETS, rank=4, kernel='snella', sparsity=0.4, absorb_activations=absorb)))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if 'norm' in name or 'gamma' in name:  # LayerNorms start at identity, LayerScale near zero
                param.add_(torch.randn_like(param) * 0.3)
    return model.train()


def test_absorbing_into_dinov2_blocks_keeps_features_and_gradients():
    plain, absorbed = snella_dinov2(absorb=False), snella_dinov2(absorb=True)
    assert absorbed_module_names(absorbed) == sorted(
        f'backbone.model.blocks.{i}.{m}' for i in range(DEPTH) for m in ('norm1', 'norm2', 'mlp.act'))
    images = torch.randn(2, 3, 60, 50)  # off the patch grid: padded, then resampled
    assert_absorption_changes_nothing(plain, absorbed, images)


def test_named_dinov2_archs_are_timms_vit_large_patch14_with_layer_scale():
    with torch.device('meta'):
        plain, registers = TimmViT('dinov2-l'), TimmViT('dinov2-reg4-l')
    for backbone, reg_tokens in ((plain, 0), (registers, 4)):
        assert backbone.out_indices == (7, 11, 15, 23)
        assert backbone.model.patch_embed.patch_size == (14, 14) and backbone.model.num_reg_tokens == reg_tokens
        assert backbone.model.patch_embed.grid_size == (37, 37)
        assert type(backbone.model.blocks[0].ls1).__name__ == 'LayerScale'


# ------------------------------------------------------------------------------------------- DINOv3 and EVA-02
def official_dinov3_state(qkv_bias_scale: float = 0.0) -> Dict[str, torch.Tensor]:
    """The key layout of ``dinov3_vitl16_pretrain_lvd1689m-*.pth`` (the official DinoVisionTransformer) at a 64-d
    width and 3 blocks: 4 storage tokens, RoPE periods, a masked qkv bias (all zeros in the distilled ViT-S/B/L)."""
    c = WIDTH
    state = {'cls_token': torch.randn(1, 1, c), 'storage_tokens': torch.randn(1, 4, c), 'mask_token': torch.randn(1, c),
             'patch_embed.proj.weight': torch.randn(c, 3, 16, 16) * 0.02, 'patch_embed.proj.bias': torch.randn(c),
             'rope_embed.periods': torch.rand(8), 'norm.weight': torch.randn(c), 'norm.bias': torch.randn(c)}
    shapes = {'norm1.weight': (c,), 'norm1.bias': (c,), 'attn.qkv.weight': (3 * c, c), 'attn.proj.weight': (c, c),
              'attn.proj.bias': (c,), 'ls1.gamma': (c,), 'norm2.weight': (c,), 'norm2.bias': (c,),
              'mlp.fc1.weight': (4 * c, c), 'mlp.fc1.bias': (4 * c,), 'mlp.fc2.weight': (c, 4 * c),
              'mlp.fc2.bias': (c,), 'ls2.gamma': (c,)}
    for block in range(DEPTH):
        state.update({f'blocks.{block}.{key}': torch.randn(shape) * 0.1 for key, shape in shapes.items()})
        state[f'blocks.{block}.attn.qkv.bias'] = torch.randn(3 * c) * qkv_bias_scale
        state[f'blocks.{block}.attn.qkv.bias_mask'] = torch.cat([torch.ones(c), torch.zeros(c), torch.ones(c)])
    return state


def official_eva02_state() -> Dict[str, torch.Tensor]:
    """The key layout of the EVA-02 release's ``eva02_L_pt_m38m_p14.pt`` (MIM pretraining) at a 64-d width, 3 blocks
    and a 4x4 grid: q/k/v apart with q and v biases, SwiGLU (w1, w2, ffn_ln, w3), RoPE tables, the MIM head."""
    c, hidden = WIDTH, int(WIDTH * 8 / 3)
    state = {'cls_token': torch.randn(1, 1, c), 'mask_token': torch.randn(1, 1, c),
             'pos_embed': torch.randn(1, 1 + GRID * GRID, c),
             'patch_embed.proj.weight': torch.randn(c, 3, 14, 14) * 0.02, 'patch_embed.proj.bias': torch.randn(c),
             'rope.freqs_cos': torch.randn(GRID * GRID, 32), 'rope.freqs_sin': torch.randn(GRID * GRID, 32),
             'norm.weight': torch.randn(c), 'norm.bias': torch.randn(c),
             'lm_head.weight': torch.randn(8, c), 'lm_head.bias': torch.randn(8)}
    shapes = {'norm1.weight': (c,), 'norm1.bias': (c,), 'attn.q_proj.weight': (c, c), 'attn.q_bias': (c,),
              'attn.k_proj.weight': (c, c), 'attn.v_proj.weight': (c, c), 'attn.v_bias': (c,),
              'attn.proj.weight': (c, c), 'attn.proj.bias': (c,), 'norm2.weight': (c,), 'norm2.bias': (c,),
              'mlp.w1.weight': (hidden, c), 'mlp.w1.bias': (hidden,), 'mlp.w2.weight': (hidden, c),
              'mlp.w2.bias': (hidden,), 'mlp.ffn_ln.weight': (hidden,), 'mlp.ffn_ln.bias': (hidden,),
              'mlp.w3.weight': (c, hidden), 'mlp.w3.bias': (c,)}
    for block in range(DEPTH):
        state.update({f'blocks.{block}.{key}': torch.randn(shape) * 0.1 for key, shape in shapes.items()})
    return state


EVA_FAMILIES = {'dinov3': (DINOV3, 16, official_dinov3_state), 'eva02': (EVA02, 14, official_eva02_state)}


def tiny_eva(timm_name: str) -> Dict:
    return dict(family='eva', timm_name=timm_name, embed_dim=WIDTH, depth=DEPTH, num_heads=2)


def timm_loaded_eva(timm_name: str, state: Dict[str, torch.Tensor], img_size: int) -> torch.nn.Module:
    """timm's own Eva, loaded the timm way: its checkpoint filter, then a strict load."""
    model = timm.create_model(timm_name, pretrained=False, img_size=img_size, embed_dim=WIDTH, depth=DEPTH,
                              num_heads=2, num_classes=0, dynamic_img_size=True)
    model.load_state_dict(eva.checkpoint_filter_fn(dict(state), model))
    return model.eval()


@pytest.mark.parametrize('family', EVA_FAMILIES)
def test_official_eva_checkpoint_gives_timms_features(tmp_path, family):
    timm_name, patch, official_state = EVA_FAMILIES[family]
    state = official_state()
    torch.save(state, tmp_path / 'official.pth')
    size = patch * GRID
    reference = timm_loaded_eva(timm_name, state, img_size=size)
    ours = loaded(tiny_eva(timm_name), tmp_path / 'official.pth', img_size=size, out_indices=(0, 2))
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = reference.forward_intermediates(images, indices=[0, 2], intermediates_only=True)
        for got, want in zip(ours(images), expected, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_official_dinov3_and_eva02_keys_are_detected():
    assert detect_format(official_dinov3_state()) == 'dinov3'
    assert detect_format(official_eva02_state()) == 'eva02'


def test_a_dinov3_checkpoint_with_a_non_zero_qkv_bias_is_refused(tmp_path):
    """timm's DINOv3-L has no qkv bias: dropping a non-zero one would change every feature."""
    torch.save(official_dinov3_state(qkv_bias_scale=0.1), tmp_path / 'dinov3.pth')
    with pytest.raises(ValueError, match=r'unexpected in the checkpoint \(6\): blocks\.0\.attn\.q_bias'):
        loaded(tiny_eva(DINOV3), tmp_path / 'dinov3.pth', img_size=64)


@pytest.mark.parametrize('family', EVA_FAMILIES)
def test_an_eva_checkpoint_missing_a_block_key_is_refused(tmp_path, family):
    timm_name, patch, official_state = EVA_FAMILIES[family]
    state = official_state()
    del state['blocks.2.norm2.bias']
    torch.save(state, tmp_path / 'official.pth')
    with pytest.raises(ValueError, match=r'missing from the checkpoint \(1\): blocks\.2\.norm2\.bias'):
        loaded(tiny_eva(timm_name), tmp_path / 'official.pth', img_size=patch * GRID)


@pytest.mark.parametrize('family,cells', [('dinov3', (32, 32)), ('eva02', (37, 37))])
def test_eva_encoders_run_512_crops_from_a_smaller_checkpoint_grid(tmp_path, family, cells):
    timm_name, patch, official_state = EVA_FAMILIES[family]
    torch.save(official_state(), tmp_path / 'official.pth')
    ours = loaded(tiny_eva(timm_name), tmp_path / 'official.pth', img_size=512, out_indices=(0, 2))
    assert ours.model.patch_embed.grid_size == cells
    if ours.model.pos_embed is not None:  # EVA-02's absolute table, resized from 4x4; DINOv3 has RoPE only
        assert ours.model.pos_embed.shape == (1, 1 + cells[0] * cells[1], WIDTH)
    with torch.no_grad():
        assert [f.shape for f in ours(torch.randn(1, 3, 512, 512))] == [(1, WIDTH, *cells)] * 2
        assert ours(torch.randn(1, 3, 360, 480))[0].shape[-2:] == (-(-360 // patch), -(-480 // patch))


def snella_eva(timm_name: str, absorb: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='SNELLABackbone',
        backbone=dict(type='TimmViT', arch=tiny_eva(timm_name), img_size=64, out_indices=(1, 2)),
        snella=dict(targets=EVA_TARGETS, rank=4, kernel='snella', sparsity=0.4, absorb_activations=absorb)))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if 'norm' in name or 'gamma' in name:  # LayerNorms start at identity, LayerScale near zero
                param.add_(torch.randn_like(param) * 0.3)
    return model.train()


@pytest.mark.parametrize('timm_name,absorbed', [
    (DINOV3, ('norm1', 'norm2', 'mlp.act')),
    (EVA02, ('mlp.norm',)),  # norm1 feeds q, k and v, norm2 both SwiGLU inputs: only fc2's LayerNorm is alone
], ids=['dinov3', 'eva02'])
def test_absorbing_into_eva_blocks_keeps_features_and_gradients(timm_name, absorbed):
    plain, fused = snella_eva(timm_name, absorb=False), snella_eva(timm_name, absorb=True)
    assert absorbed_module_names(fused) == sorted(
        f'backbone.model.blocks.{i}.{m}' for i in range(DEPTH) for m in absorbed)
    images = torch.randn(2, 3, 60, 50)  # off the patch grid: padded, then resampled
    assert_absorption_changes_nothing(plain, fused, images)


def test_eva02_snella_targets_are_swiglus_three_projections_and_q_k_v():
    model = snella_eva(EVA02, absorb=True)
    names = ('attn.q_proj', 'attn.k_proj', 'attn.v_proj', 'attn.proj', 'mlp.fc1_g', 'mlp.fc1_x', 'mlp.fc2')
    assert sorted(model.report.layers) == sorted(f'model.blocks.{i}.{name}' for i in range(DEPTH) for name in names)


def test_named_eva_archs_are_timms_dinov3_and_eva02_large():
    with torch.device('meta'):
        dinov3, eva02 = TimmViT('dinov3-l'), TimmViT('eva02-l')
    assert dinov3.model.patch_embed.grid_size == (32, 32) and dinov3.model.reg_token.shape[1] == 4
    assert dinov3.model.blocks[0].attn.q_bias is None and dinov3.model.rope is not None
    assert eva02.model.patch_embed.grid_size == (37, 37) and eva02.built.mlp_dim == 2730
    assert type(eva02.model.blocks[0].mlp).__name__ == 'SwiGLU'
    assert dinov3.out_indices == eva02.out_indices == (7, 11, 15, 23)


# ------------------------------------------------------------------------------------------------------ CLIP
CLIP = 'vit_large_patch14_clip_quickgelu_224'


def official_clip_state(prefix: str = '') -> Dict[str, torch.Tensor]:
    """The key layout of OpenAI's CLIP (``model.state_dict()`` of ViT-L-14; OpenCLIP's
    ``open_clip_pytorch_model.bin`` for it is the same) at a 64-d width, 3 blocks and a 4x4 grid: the visual tower
    under ``visual.``, beside a (tiny) text tower that the backbone leaves out."""
    c = WIDTH
    visual = {'class_embedding': torch.randn(c), 'positional_embedding': torch.randn(1 + GRID * GRID, c),
              'conv1.weight': torch.randn(c, 3, 14, 14) * 0.02, 'ln_pre.weight': torch.randn(c),
              'ln_pre.bias': torch.randn(c), 'ln_post.weight': torch.randn(c), 'ln_post.bias': torch.randn(c),
              'proj': torch.randn(c, 32)}
    shapes = {'ln_1.weight': (c,), 'ln_1.bias': (c,), 'attn.in_proj_weight': (3 * c, c), 'attn.in_proj_bias': (3 * c,),
              'attn.out_proj.weight': (c, c), 'attn.out_proj.bias': (c,), 'ln_2.weight': (c,), 'ln_2.bias': (c,),
              'mlp.c_fc.weight': (4 * c, c), 'mlp.c_fc.bias': (4 * c,), 'mlp.c_proj.weight': (c, 4 * c),
              'mlp.c_proj.bias': (c,)}
    for block in range(DEPTH):
        visual.update({f'transformer.resblocks.{block}.{key}': torch.randn(shape) * 0.1
                       for key, shape in shapes.items()})
    text = {'token_embedding.weight': torch.randn(10, 32), 'positional_embedding': torch.randn(8, 32),
            'transformer.resblocks.0.attn.in_proj_weight': torch.randn(96, 32), 'ln_final.weight': torch.randn(32),
            'text_projection': torch.randn(32, 32), 'logit_scale': torch.tensor(4.6)}
    return {f'{prefix}{k}': v for k, v in {**text, **{f'visual.{k}': v for k, v in visual.items()}}.items()}


@pytest.mark.parametrize('prefix', ['', 'module.'], ids=['openai', 'ddp-saved'])
def test_official_clip_checkpoint_gives_timms_clip_features(tmp_path, prefix):
    state = official_clip_state(prefix)
    torch.save(state, tmp_path / 'clip.pth')
    reference = timm.create_model(CLIP, pretrained=False, img_size=14 * GRID, embed_dim=WIDTH, depth=DEPTH,
                                  num_heads=2, num_classes=32, dynamic_img_size=True)
    reference.load_state_dict(vision_transformer.checkpoint_filter_fn(dict(state), reference))
    ours = loaded(tiny(CLIP), tmp_path / 'clip.pth', img_size=14 * GRID, out_indices=(0, 2))
    images = torch.randn(2, 3, 14 * GRID, 14 * GRID)
    with torch.no_grad():
        expected = reference.eval().forward_intermediates(images, indices=[0, 2], intermediates_only=True)
        for got, want in zip(ours(images), expected, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_a_clip_checkpoint_missing_a_visual_key_is_refused(tmp_path):
    state = official_clip_state()
    del state['visual.ln_pre.bias']
    assert detect_format(state) == 'clip'
    torch.save(state, tmp_path / 'clip.pth')
    with pytest.raises(ValueError, match=r'missing from the checkpoint \(1\): norm_pre\.bias'):
        loaded(tiny(CLIP), tmp_path / 'clip.pth', img_size=14 * GRID)


def test_clip_runs_512_crops_and_absorbs_quickgelu_into_fc2(tmp_path):
    path = str(tmp_path / 'clip.pth')
    torch.save(official_clip_state(), path)
    model = MODELS.build(dict(
        type='SNELLABackbone',
        backbone=dict(type='TimmViT', arch=tiny(CLIP), img_size=512, out_indices=(2,), pretrained=path),
        snella=dict(targets=TARGETS, rank=4, kernel='snella')))
    model.init_weights()
    assert model.backbone.model.pos_embed.shape == (1, 1 + 37 * 37, WIDTH)  # resized from the checkpoint's 4x4
    assert type(model.backbone.model.blocks[0].mlp.fc2.absorbed).__name__ == 'QuickGELU'
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 512, 512))[0].shape == (1, WIDTH, 37, 37)


class ScriptedLinear(torch.nn.Module):
    """Stands for OpenAI's CLIP release files, which are TorchScript archives."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def test_a_torchscript_clip_release_is_refused_with_the_conversion_command(tmp_path):
    torch.jit.save(torch.jit.script(ScriptedLinear()), tmp_path / 'ViT-L-14.pt')
    with pytest.raises(ValueError, match=r'(?s)TorchScript archive.*torch\.jit\.load.*state_dict\(\)'):
        loaded(tiny(CLIP), tmp_path / 'ViT-L-14.pt', img_size=14 * GRID)


def test_named_clip_arch_is_openais_pre_norm_quickgelu_vit_large():
    with torch.device('meta'):
        clip = TimmViT('clip-l')
    assert clip.model.patch_embed.grid_size == (37, 37) and clip.model.patch_embed.proj.bias is None
    assert type(clip.model.norm_pre).__name__ == 'LayerNorm'
    assert type(clip.model.blocks[0].mlp.act).__name__ == 'QuickGELU'
