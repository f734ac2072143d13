"""SNELLABackbone on a tiny registered backbone: wrapping, option checks, and delta-only checkpoints tied to their
base."""
import re
import shutil

import pytest
import torch
from mmseg.registry import MODELS

import snella_seg  # noqa: F401  (registers the components)
from snella_seg.models.snella_backbone import FINGERPRINT_KEY, decode_fingerprint, encode_fingerprint
from snella_seg.snella import SNELLALinear

from tests.helpers.log_capture import log_from_here
from tests.helpers.tiny_backbone import TARGETS, build


def test_wraps_freezes_and_injects():
    model = build()
    assert sum(isinstance(m, SNELLALinear) for m in model.modules()) == 8
    assert all(('.deltas.' in n) == p.requires_grad for n, p in model.named_parameters())
    assert model(torch.randn(1, 3, 16, 16))[0].shape == (1, 16, 4, 4)


def test_unknown_option_and_missing_targets_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown SNELLA option\(s\) \['rnak'\].*valid options"):
        build(rnak=4)
    with pytest.raises(ValueError, match='needs "targets"'):
        MODELS.build(dict(type='SNELLABackbone', backbone=dict(type='TinyTestBackbone'), snella=dict(rank=4)))
    with pytest.raises(ValueError, match='matches no module'):
        build(targets=[r'blocks\.\d+\.mlp\.fc9'])


def test_options_are_checked_as_the_config_is_read():
    with pytest.raises(ValueError, match="divisible by 2 for kernel 'snella'"):
        build(rank=3)


def test_backbone_holds_every_option_with_defaults_filled():
    config = build(kernel='snell').snella_config
    assert config.to_dict() == dict(targets=TARGETS, rank=4, kernel='snell', mask='magnitude', sparsity=0.0,
                                    dropout=0.0, drop_path=0.0, checkpoint=True, split_qkv=True,
                                    absorb_activations=True)


def save_tiny_backbone(path, seed):
    torch.manual_seed(seed)
    source = MODELS.build(dict(type='TinyTestBackbone'))
    torch.save(source.state_dict(), path)
    return path, source


@pytest.fixture
def pretrained_file(tmp_path):
    return save_tiny_backbone(tmp_path / 'pretrained.pth', seed=1)


@pytest.fixture
def other_pretrained_file(tmp_path):
    """Another base of the same shapes, as a second ViT-B file would be."""
    return save_tiny_backbone(tmp_path / 'other_pretrained.pth', seed=2)[0]


def trained(pretrained):
    """A model whose updates were trained (here: shifted) on the base in ``pretrained``."""
    model = build(pretrained=str(pretrained))
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    return model


def trained_state(pretrained):
    return trained(pretrained).state_dict()


def test_init_weights_loads_pretrained_into_frozen_bases(pretrained_file):
    path, source = pretrained_file
    model = build(pretrained=str(path))
    model.init_weights()
    assert torch.equal(model.backbone.blocks[0].attn.qkv.base.weight, source.blocks[0].attn.qkv.weight)


def test_delta_only_state_dict_reloads_on_top_of_pretrained(pretrained_file):
    path, _ = pretrained_file
    model = trained(path)
    state = model.state_dict()
    assert state and all('.deltas.' in k for k in state if k != FINGERPRINT_KEY)
    fresh = build(pretrained=str(path))  # not initialised: loading a delta-only dict pulls in the bases
    fresh.load_state_dict(state)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(fresh(x)[0], model(x)[0])


def test_delta_only_state_dict_records_the_base_file_and_its_hash(pretrained_file):
    path, _ = pretrained_file
    fingerprint = decode_fingerprint(trained_state(path)[FINGERPRINT_KEY])
    assert fingerprint['file'] == str(path)
    assert len(fingerprint['sha256']) == 64


def test_fingerprint_tensor_has_one_shape_whatever_the_path():
    """Resuming with the base at another path must see the checkpoint's tensor shapes (ResumeCompatibilityHook)."""
    short = encode_fingerprint(dict(sha256='0' * 64, file='a.pth'))
    long_path = '/very/' * 100 + 'long.pth'
    long = encode_fingerprint(dict(sha256='0' * 64, file=long_path))
    assert short.shape == long.shape and short.dtype == torch.uint8
    assert decode_fingerprint(short) == dict(sha256='0' * 64, file='a.pth')
    assert decode_fingerprint(long)['file'].endswith('/very/long.pth')


def test_delta_checkpoint_on_another_base_is_refused_naming_both_files(pretrained_file, other_pretrained_file):
    state = trained_state(pretrained_file[0])
    with pytest.raises(ValueError) as refused:
        build(pretrained=str(other_pretrained_file)).load_state_dict(state)
    message = str(refused.value)
    assert re.search(f'trained on .*{re.escape(str(pretrained_file[0]))}.*holds .*'
                     f'{re.escape(str(other_pretrained_file))}', message)
    assert 'model.backbone.check_base=False' in message


def test_fine_tuning_from_a_delta_checkpoint_checks_the_loaded_base(pretrained_file, other_pretrained_file):
    """load_from runs after init_weights: the same base loads, another is refused."""
    state = trained_state(pretrained_file[0])
    same = build(pretrained=str(pretrained_file[0]))
    same.init_weights()
    same.load_state_dict(state)
    other = build(pretrained=str(other_pretrained_file))
    other.init_weights()
    with pytest.raises(ValueError, match='trained on'):
        other.load_state_dict(state)


def test_the_same_base_under_another_file_name_loads(pretrained_file, tmp_path):
    state = trained_state(pretrained_file[0])
    moved = shutil.copy(pretrained_file[0], tmp_path / 'moved.pth')
    build(pretrained=str(moved)).load_state_dict(state)


def test_check_base_false_loads_another_base_with_a_warning(pretrained_file, other_pretrained_file, capsys):
    state = trained_state(pretrained_file[0])
    log = log_from_here(capsys)
    model = build(pretrained=str(other_pretrained_file), check_base=False)
    model.load_state_dict(state)
    assert 'Loading anyway (model.backbone.check_base=False)' in log()
    key = 'backbone.blocks.0.attn.qkv.deltas.0.alpha'
    assert torch.equal(model.state_dict()[key], state[key])


def test_delta_checkpoint_without_fingerprint_loads_with_a_warning(pretrained_file, other_pretrained_file, capsys):
    state = trained_state(pretrained_file[0])
    del state[FINGERPRINT_KEY]
    log = log_from_here(capsys)
    build(pretrained=str(other_pretrained_file)).load_state_dict(state)
    assert 'records no base fingerprint' in log()


def test_full_state_dict_holds_no_fingerprint(pretrained_file):
    model = build(pretrained=str(pretrained_file[0]), save='full')
    model.init_weights()
    assert FINGERPRINT_KEY not in model.state_dict()


def test_without_pretrained_source_auto_saves_everything():
    model = build()
    assert any('.base.weight' in k for k in model.state_dict())
    assert not build(save='full', pretrained='x.pth').delta_only


def test_delta_checkpoint_for_another_backbone_is_refused(pretrained_file):
    path, _ = pretrained_file
    model = build(pretrained=str(path), rank=8)
    with pytest.raises(ValueError, match='does not fit this backbone.*another shape'):
        build(pretrained=str(path)).load_state_dict(model.state_dict())
    fewer = build(pretrained=str(path), targets=[r'blocks\.\d+\.mlp\.fc\d'])
    with pytest.raises(ValueError, match='missing'):
        build(pretrained=str(path)).load_state_dict(fewer.state_dict())
