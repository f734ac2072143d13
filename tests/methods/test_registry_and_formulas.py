"""The method registry's contract, the refusals a user may meet, and each adapter's placement in a block checked
against its paper's formula written out by hand (the submodules' own ``forward`` bypasses the method's hooks)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from snella_seg.methods import METHODS, Method, get_method, register_method, transformer_blocks
from snella_seg.methods.bitfit import apply_bitfit

from tests.helpers.tiny_timm import DEPTH, tiny_timm_sam, tiny_timm_vit

GRID = (4, 4)


def test_an_unknown_method_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown method 'lora_plus'.*'bitfit'.*'mona'"):
        get_method('lora_plus')


def test_a_taken_name_is_refused_unless_replaced():
    original = METHODS['bitfit']
    with pytest.raises(ValueError, match="'bitfit' is already registered"):
        register_method(Method(name='bitfit', apply=apply_bitfit, citation='', merge=original.merge))
    try:
        replacement = register_method(Method(name='bitfit', apply=apply_bitfit, citation='x', merge=original.merge),
                                      replace=True)
        assert get_method('bitfit') is replacement
    finally:
        register_method(original, replace=True)


def test_a_method_without_merge_must_say_why():
    with pytest.raises(ValueError, match='not_mergeable_because'):
        Method(name='mystery', apply=apply_bitfit, citation='')


@pytest.mark.parametrize('k', [0, DEPTH + 1])
def test_partial_refuses_more_blocks_than_the_model_has(k):
    with pytest.raises(ValueError, match=f'k={k} must be between 1 and the {DEPTH} blocks'):
        get_method('partial').apply(tiny_timm_vit(), k=k)


def test_partial_k_trains_the_last_k_blocks():
    model = tiny_timm_vit(depth=3)
    report = get_method('partial').apply(model, k=2)
    assert {name.split('.')[1] for name in report.trainable} == {'1', '2'}


def test_vpt_deep_refuses_sam_naming_the_block_and_what_to_use():
    model = tiny_timm_sam()
    with pytest.raises(ValueError, match=r"block 'blocks.0' \(.*Block, windowed, window_size=2\).*use adapter"):
        get_method('vpt_deep').apply(model)
    assert all(p.requires_grad for p in model.parameters())  # refused before anything changed


def test_a_model_without_blocks_is_refused():
    with pytest.raises(ValueError, match='no transformer blocks'):
        get_method('adapter').apply(nn.Sequential(nn.Linear(4, 4)))


@pytest.mark.parametrize('method', ['adapter', 'adaptformer', 'ssf', 'vpt_deep', 'mona'])
def test_a_method_that_adds_modules_refuses_to_add_them_twice(method):
    model = tiny_timm_vit()
    get_method(method).apply(model)
    hooks = sum(len(module._forward_hooks) + len(module._forward_pre_hooks) for module in model.modules())
    with pytest.raises(ValueError, match='a method applies once to a model'):
        get_method(method).apply(model)
    assert sum(len(module._forward_hooks) + len(module._forward_pre_hooks) for module in model.modules()) == hooks


@pytest.mark.parametrize('method', sorted(METHODS))
def test_added_modules_follow_the_models_mode(method):
    model = tiny_timm_vit().eval()
    get_method(method).apply(model)
    assert not any(module.training for module in model.modules())


def test_ssf_with_the_authors_random_init_is_no_longer_the_identity_but_still_merges():
    torch.manual_seed(0)
    model, base = tiny_timm_vit().eval(), tiny_timm_vit().eval()
    base.load_state_dict(model.state_dict())
    get_method('ssf').apply(model, init_std=0.02)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        adapted = model(x)
        assert not torch.allclose(adapted, base(x))
        torch.testing.assert_close(get_method('ssf').merged(model)(x), adapted, rtol=1e-5, atol=1e-5)


def first_block(method: str, **options):
    """The first block of a tiny ViT with ``method`` applied and its trainable tensors moved off their init."""
    torch.manual_seed(0)
    model = tiny_timm_vit().eval()
    get_method(method).apply(model, **options)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return transformer_blocks(model)[0][1]


def tokens() -> torch.Tensor:
    return torch.randn(2, 1 + GRID[0] * GRID[1], 32, generator=torch.Generator().manual_seed(3))


def test_adapter_follows_each_sublayer_before_its_residual():
    block, x = first_block('adapter'), tokens()
    attn, mlp = block.attn, block.mlp
    with torch.no_grad():
        heads = attn.qkv(block.norm1(x)).reshape(2, x.shape[1], 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        mixed = F.scaled_dot_product_attention(*heads).transpose(1, 2).reshape(x.shape)
        projected = attn.proj.forward(mixed)
        x = x + projected + block.adapter_attn(projected)
        hidden = mlp.fc2.forward(mlp.act(mlp.fc1(block.norm2(x))))
        torch.testing.assert_close(block(tokens()), x + hidden + block.adapter_mlp(hidden))


def test_adaptformer_reads_the_stream_beside_the_mlp_scaled():
    block, x = first_block('adaptformer'), tokens()
    with torch.no_grad():
        x = x + block.attn(block.norm1(x))
        branch = 0.1 * block.adaptformer.up(torch.relu(block.adaptformer.down(x)))
        torch.testing.assert_close(block(tokens()), x + block.mlp(block.norm2.forward(x)) + branch)


def test_mona_transforms_the_stream_after_each_residual():
    block, x = first_block('mona'), tokens()
    block.mona.grid.image.size = GRID  # what the patch embedding's hook records for a 32 x 32 image
    with torch.no_grad():
        x = x + block.attn(block.norm1(x))
        x = x + block.mona.after_attn(x, GRID)
        x = x + block.mlp(block.norm2.forward(x))
        torch.testing.assert_close(block(tokens()), x + block.mona.after_mlp(x, GRID))


def test_mona_adapter_is_the_papers_formula():
    mona = first_block('mona').mona.after_mlp
    x = tokens()
    with torch.no_grad():
        z = mona.down(mona.norm(x) * mona.norm_scale + x * mona.input_scale)
        grid = z[:, 1:].transpose(1, 2).reshape(2, -1, *GRID)
        grid = grid + sum(conv(grid) for conv in mona.convs.depthwise) / 3
        grid = (grid + mona.convs.projector(grid)).flatten(2).transpose(1, 2)
        z = torch.cat([z[:, :1], grid], dim=1)
        torch.testing.assert_close(mona(x, GRID), mona.up(F.gelu(z)))


def test_vpt_deep_prepends_the_blocks_prompts_and_drops_them_after():
    block, x = first_block('vpt_deep', num_tokens=3), tokens()
    with torch.no_grad():
        prompts = block.prompts.tokens.expand(2, -1, -1)
        torch.testing.assert_close(block(x), block.forward(torch.cat([prompts, x], dim=1))[:, 3:])


def test_mona_needs_the_grid_the_patch_embedding_records():
    block = first_block('mona')
    with pytest.raises(RuntimeError, match='patch grid of this token sequence is unknown'):
        block(tokens())


def test_mona_follows_the_image_size_from_call_to_call():
    torch.manual_seed(0)
    model = tiny_timm_vit().eval()
    get_method('mona').apply(model)
    first_block_mona = transformer_blocks(model)[0][1].mona
    small, odd = torch.randn(1, 3, 16, 48), torch.randn(1, 3, 30, 26)
    with torch.no_grad():
        model(small)
        assert first_block_mona.grid.size == (2, 6)
        model(odd)
        assert first_block_mona.grid.size == (4, 4)
