"""huggingface peft's LoRA family through ``snella_seg.methods.peft_methods`` on tiny timm ViT and SAM encoders: the
same trainable tensors and count as peft's own ``PeftModel``, the same outputs as ``inject_adapter_in_model``, merging
to a plain model, and the project's fused LoRA computing what peft's LoRA computes."""
import copy

import peft
import pytest
import torch

from snella_seg.methods.peft_methods import PEFT, apply_peft, peft_config
from snella_seg.snella import SNELLALinear, inject_snella

from tests.helpers.peft_configs import TARGETS, peft_configs
from tests.helpers.tiny_timm import TINY_TIMM

CONFIGS = peft_configs()
CASES = [(name, arch) for name in CONFIGS for arch in ('vit', 'sam')]


def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def perturb_trainable(model: torch.nn.Module) -> None:
    """Move every trainable tensor, as training would, so that each update is not zero (LoRA's B starts at 0)."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


def base_and_adapted(name: str, arch: str):
    torch.manual_seed(0)
    base = TINY_TIMM[arch]().eval()
    model = copy.deepcopy(base)
    torch.manual_seed(3)
    report = apply_peft(model, CONFIGS[name])
    return base, model, report


@pytest.mark.parametrize('name, arch', CASES)
def test_trains_what_peft_model_trains_and_computes_what_peft_injection_computes(name, arch):
    base, model, report = base_and_adapted(name, arch)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft_config(CONFIGS[name]))
    trainable, _ = theirs.get_nb_trainable_parameters()
    assert report.trainable_params == trainable > 0
    assert sorted(report.trainable) == sorted(n[len('base_model.model.'):] for n, p in theirs.named_parameters()
                                              if p.requires_grad)
    assert all(any(f'{part}.' in key for part in ('qkv', 'proj', 'fc1', 'fc2')) for key in report.trainable)

    injected = copy.deepcopy(base)
    torch.manual_seed(3)
    peft.inject_adapter_in_model(peft_config(CONFIGS[name]), injected)
    perturb_trainable(model)
    perturb_trainable(injected)
    with torch.no_grad():
        assert torch.equal(model(images()), injected(images()))


@pytest.mark.parametrize('name, arch', CASES)
def test_merges_to_a_plain_model_with_the_same_outputs(name, arch):
    base, model, _ = base_and_adapted(name, arch)
    perturb_trainable(model)
    with torch.no_grad():
        adapted = model(images())
        merged = PEFT.merged(model)
        assert sorted(merged.state_dict()) == sorted(base.state_dict())
        assert not torch.allclose(adapted, base(images()), atol=1e-4)  # the update matters
        assert torch.allclose(merged(images()), adapted, atol=1e-5)


def test_an_unknown_peft_config_type_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="'LoraConfg' is no peft config class; use e.g. LoraConfig"):
        apply_peft(TINY_TIMM['vit'](), dict(type='LoraConfg', r=4, target_modules=TARGETS))


def test_the_projects_fused_lora_computes_what_peft_lora_computes():
    """SNELLA's kernel 'linear' (ΔW = (A B^T)^T, no scaling) equals peft's LoRA (ΔW = alpha/r B A) with alpha = r
    once the factors are copied across: the two differ in memory, not in function."""
    torch.manual_seed(0)
    base = TINY_TIMM['vit']().eval()
    fused, theirs = copy.deepcopy(base), copy.deepcopy(base)
    inject_snella(fused, targets=[TARGETS], rank=4, kernel='linear', split_qkv=False, absorb_activations=False)
    apply_peft(theirs, dict(type='LoraConfig', r=4, lora_alpha=4, target_modules=TARGETS))
    perturb_trainable(fused)
    adapted = [name for name, module in fused.named_modules() if isinstance(module, SNELLALinear)]
    assert len(adapted) == 8
    with torch.no_grad():
        for name in adapted:
            ours, lora = fused.get_submodule(name), theirs.get_submodule(name)
            lora.lora_A['default'].weight.copy_(ours.in_factors[0].T)
            lora.lora_B['default'].weight.copy_(ours.out_factors[0])
        assert not torch.allclose(fused(images()), base(images()), atol=1e-4)
        assert torch.allclose(fused(images()), theirs(images()), atol=1e-5)
