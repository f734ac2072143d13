"""Every method of ``snella_seg.methods`` on a tiny timm ViT and a tiny timm SAM, through one set of shared checks
(one matrix, as huggingface peft's suite runs its methods): what trains, a frozen base with its state-dict keys
unchanged, gradients to the method's parameters alone, identity at initialisation, a training step that changes the
output, merging (or its refusal), deep copies, and dropout, drop-path and an image that is not whole patches."""
import copy
from typing import Dict, List, Tuple

import pytest
import torch
from torch import nn

from snella_seg.methods import METHODS, NotMergeableError, get_method

from tests.helpers.tiny_timm import DEPTH, TINY_TIMM

BLOCKS = [f'blocks.{index}' for index in range(DEPTH)]
BLOCK_BIASES = ['norm1.bias', 'attn.qkv.bias', 'attn.proj.bias', 'norm2.bias', 'mlp.fc1.bias', 'mlp.fc2.bias']
BLOCK_NORMS = ['norm1.weight', 'norm1.bias', 'norm2.weight', 'norm2.bias']
LINEAR = ['weight', 'bias']
MONA = (['norm.weight', 'norm.bias', 'norm_scale', 'input_scale', 'down.weight', 'down.bias']
        + [f'convs.depthwise.{index}.{kind}' for index in range(3) for kind in LINEAR]
        + ['convs.projector.weight', 'convs.projector.bias', 'up.weight', 'up.bias'])
# Per method: the trainable parameters inside each block, and outside the blocks per architecture.
IN_BLOCK: Dict[str, List[str]] = {
    'bitfit': BLOCK_BIASES,
    'ln_tune': BLOCK_NORMS,
    'adapter': [f'adapter_{part}.{proj}.{kind}' for part in ('attn', 'mlp') for proj in ('down', 'up')
                for kind in LINEAR],
    'adaptformer': [f'adaptformer.{proj}.{kind}' for proj in ('down', 'up') for kind in LINEAR],
    'ssf': [f'ssf.{op}.{kind}' for op in ('norm1', 'attn_qkv', 'attn_proj', 'norm2', 'mlp_fc1', 'mlp_fc2')
            for kind in ('scale', 'shift')],
    'vpt_deep': ['prompts.tokens'],
    'mona': [f'mona.{place}.{name}' for place in ('after_attn', 'after_mlp') for name in MONA],
}
OUTSIDE_BLOCKS: Dict[Tuple[str, str], List[str]] = {
    ('bitfit', 'vit'): ['patch_embed.proj.bias', 'norm.bias'],
    ('bitfit', 'sam'): ['patch_embed.proj.bias', 'neck.1.bias', 'neck.3.bias'],
    ('ln_tune', 'vit'): ['norm.weight', 'norm.bias'],
    ('ln_tune', 'sam'): ['neck.1.weight', 'neck.1.bias', 'neck.3.weight', 'neck.3.bias'],
}
# Trainable scalars at width 32 (MLP 128), 2 blocks, default options: e.g. an adapter is 2 * (32*64 + 64) + ... ;
# partial on SAM also trains the last (global) block's relative position tables, 2 * 7 * 16.
COUNTS = {
    'vit': dict(bitfit=768, ln_tune=320, partial=12704, adapter=16768, adaptformer=8384, ssf=1408, vpt_deep=640,
                mona=55936),
    'sam': dict(bitfit=768, ln_tune=320, partial=12928, adapter=16768, adaptformer=8384, ssf=1408, mona=55936),
}
CASES = [(method, arch) for arch in ('vit', 'sam') for method in sorted(COUNTS[arch])]
IDENTITY_AT_INIT = {'bitfit', 'ln_tune', 'partial', 'adapter', 'adaptformer', 'ssf', 'mona'}
ODD_SIZE = (2, 3, 30, 26)  # 8 px patches: neither side is whole patches


def test_every_registered_method_is_in_the_matrix():
    assert set(METHODS) == set(COUNTS['vit']) == set(COUNTS['sam']) | {'vpt_deep'}


def expected_trainable(method: str, arch: str, base: nn.Module) -> List[str]:
    if method == 'partial':
        return [name for name, _ in base.named_parameters() if name.startswith(BLOCKS[-1] + '.')]
    return [f'{block}.{name}' for block in BLOCKS for name in IN_BLOCK[method]] + OUTSIDE_BLOCKS.get((method, arch), [])


def adapted(method: str, arch: str, **model_options) -> Tuple[nn.Module, nn.Module]:
    """(the frozen base, a copy of it with the method applied), both in eval mode."""
    torch.manual_seed(0)
    base = TINY_TIMM[arch](**model_options).eval()
    model = copy.deepcopy(base)
    get_method(method).apply(model)
    return base, model


def images(shape=ODD_SIZE) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def trainable(model: nn.Module) -> Dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def perturb_trainable(model: nn.Module) -> None:
    """Move every trainable tensor, as a few training steps would, so that the method's update is not zero."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in trainable(model).values():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize('method,arch', CASES)
def test_trains_exactly_the_methods_parameters(method, arch):
    base, model = adapted(method, arch)
    torch.manual_seed(0)
    report = get_method(method).apply(copy.deepcopy(base))
    expected = expected_trainable(method, arch, base)
    assert sorted(report.trainable) == sorted(expected)
    assert sorted(trainable(model)) == sorted(expected)
    assert report.trainable_params == COUNTS[arch][method]
    assert report.total_params == sum(p.numel() for p in model.parameters())
    assert method in str(report) and f'{COUNTS[arch][method]:,}' in str(report)


@pytest.mark.parametrize('method,arch', CASES)
def test_base_keys_and_tensors_unchanged_and_new_keys_are_the_methods(method, arch):
    base, model = adapted(method, arch)
    before, after = base.state_dict(), model.state_dict()
    assert all(torch.equal(after[key], tensor) for key, tensor in before.items())
    assert set(after) - set(before) <= set(trainable(model))


@pytest.mark.parametrize('method,arch', [case for case in CASES if case[0] in IDENTITY_AT_INIT])
def test_identity_at_initialisation(method, arch):
    base, model = adapted(method, arch)
    with torch.no_grad():
        assert torch.equal(model(images()), base(images()))


def test_vpt_deep_prompts_change_the_output_from_the_start():
    base, model = adapted('vpt_deep', 'vit')
    with torch.no_grad():
        assert not torch.allclose(model(images()), base(images()))


@pytest.mark.parametrize('method,arch', CASES)
def test_gradients_reach_only_the_methods_parameters(method, arch):
    _, model = adapted(method, arch)
    model.train()
    model(images()).square().mean().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(grads[name] is not None for name in trainable(model))
    assert all(grad is None for name, grad in grads.items() if name not in trainable(model))
    assert sum(grad.abs().sum() for grad in grads.values() if grad is not None) > 0


@pytest.mark.parametrize('method,arch', CASES)
def test_every_trainable_tensor_is_used_once_off_its_init(method, arch):
    """A hook that never fires would leave its module's tensors without gradient (zero up-projections aside)."""
    _, model = adapted(method, arch)
    perturb_trainable(model)
    model(images()).square().mean().backward()
    assert [name for name, p in trainable(model).items() if not p.grad.abs().sum() > 0] == []


@pytest.mark.parametrize('method,arch', CASES)
def test_a_training_step_changes_the_output(method, arch):
    _, model = adapted(method, arch)
    with torch.no_grad():
        before = model(images())
    optimizer = torch.optim.SGD(trainable(model).values(), lr=1.0)
    model.train()
    model(images()).square().mean().backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(images()), before)


@pytest.mark.parametrize('method,arch', CASES)
def test_merge_to_a_plain_model_or_refuse_naming_why(method, arch):
    base, model = adapted(method, arch)
    perturb_trainable(model)
    with torch.no_grad():
        expected = model(images())
    registered = get_method(method)
    if not registered.mergeable:
        with pytest.raises(NotMergeableError, match=rf'{method} cannot be merged.*not a weight delta'):
            registered.merged(model)
        return
    merged = registered.merged(model)
    assert set(merged.state_dict()) == set(base.state_dict())
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in merged.modules())
    plain = copy.deepcopy(base)
    plain.load_state_dict(merged.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(images()), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('method,arch', CASES)
def test_a_deep_copy_carries_its_own_hooks(method, arch):
    _, model = adapted(method, arch)
    perturb_trainable(model)
    duplicate = copy.deepcopy(model)
    with torch.no_grad():
        expected = model(images())
        for parameter in trainable(model).values():
            parameter.zero_()
        torch.testing.assert_close(duplicate(images()), expected, rtol=0, atol=0)


@pytest.mark.parametrize('method,arch', CASES)
def test_trains_under_dropout_and_drop_path_on_an_image_of_partial_patches(method, arch):
    base, model = adapted(method, arch, drop_path_rate=0.2, proj_drop_rate=0.1, attn_drop_rate=0.1)
    model.train()
    output = model(images())
    output.square().mean().backward()
    assert output.shape == base(images()).shape
    assert all(p.grad is not None for p in trainable(model).values())


@pytest.mark.parametrize('method,arch', CASES)
def test_bfloat16_models_and_autocast(method, arch):
    base, model = adapted(method, arch)
    low = copy.deepcopy(base).to(torch.bfloat16)
    get_method(method).apply(low)
    assert {p.dtype for p in low.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        assert low(images().to(torch.bfloat16)).dtype == torch.bfloat16
    with torch.autocast('cpu', dtype=torch.bfloat16):
        output, expected = model.train()(images()), base(images())
    output.float().square().mean().backward()
    assert output.dtype == expected.dtype
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable(model).values())
