"""inject_snella / merge_snella on a tiny ViT-shaped model."""
import pytest
import torch

from snella_seg.snella import SNELLAConfig, SNELLALinear, inject_snella, merge_snella

from tests.helpers.tiny_vit import ALL_TARGETS, TinyViT


def test_injects_targets_freezes_the_rest_and_reports():
    torch.manual_seed(0)
    model = TinyViT()
    report = inject_snella(model, ALL_TARGETS, rank=4)
    assert len(report.layers) == 8
    qkv = model.blocks[0].attn.qkv
    assert isinstance(qkv, SNELLALinear) and len(qkv.deltas) == 3  # q, k, v updates
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all('.deltas.' in n for n in trainable)
    assert report.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # rank * (in + out) + 3 scalars per update; qkv: three updates of out=dim each
    dim = 16
    per_block = 3 * (4 * (dim + dim) + 3) + (4 * (dim + dim) + 3) + (4 * (dim + 2 * dim) + 3) * 2
    assert report.trainable == 2 * per_block
    assert 'blocks.*.attn.qkv (x2)' in str(report)


def test_config_positional_and_keyword_targets_inject_the_same_updates():
    """``targets=`` is the v0.1 keyword form, still supported beside a SNELLAConfig and positional targets."""
    states = []
    for call in (lambda m: inject_snella(m, SNELLAConfig(targets=ALL_TARGETS, rank=4, mask='binary')),
                 lambda m: inject_snella(m, ALL_TARGETS, rank=4, mask='binary'),
                 lambda m: inject_snella(m, targets=ALL_TARGETS, rank=4, mask='binary')):
        torch.manual_seed(0)
        model = TinyViT()
        report = call(model)
        assert len(report.layers) == 8 and model.blocks[1].mlp.fc2.deltas[0].mask == 'binary'
        states.append(model.state_dict())
    for state in states[1:]:
        assert state.keys() == states[0].keys()
        assert all(torch.equal(state[k], states[0][k]) for k in state)


def test_targets_given_twice_or_not_at_all_are_clear_errors():
    with pytest.raises(TypeError, match='targets twice'):
        inject_snella(TinyViT(), ALL_TARGETS, targets=ALL_TARGETS, rank=4)
    with pytest.raises(TypeError, match='needs the layers to adapt.*targets='):
        inject_snella(TinyViT(), rank=4)


def test_split_qkv_can_be_disabled():
    model = TinyViT()
    inject_snella(model, [r'blocks\.0\.attn\.qkv'], split_qkv=False, rank=4)
    assert len(model.blocks[0].attn.qkv.deltas) == 1


def test_target_matching_nothing_lists_linear_names():
    with pytest.raises(ValueError, match=r'matches no module.*blocks\.\*\.mlp\.fc1'):
        inject_snella(TinyViT(), [r'blocks\.\d+\.mlp\.fc3'], rank=4)


def test_target_matching_non_linear_is_an_error():
    with pytest.raises(ValueError, match='not nn.Linear.*LayerNorm'):
        inject_snella(TinyViT(), [r'blocks\.\d+\.norm1'], rank=4)


def test_invalid_regex_is_an_error():
    with pytest.raises(ValueError, match='not a valid regular expression'):
        inject_snella(TinyViT(), ['blocks.(('], rank=4)


def test_merge_gives_plain_model_with_equal_outputs():
    torch.manual_seed(0)
    model = TinyViT()
    inject_snella(model, ALL_TARGETS, rank=4, sparsity=0.5)
    model.eval()
    x = torch.randn(3, 6, 4)
    before = model(x)
    merge_snella(model)
    assert not any(isinstance(m, SNELLALinear) for m in model.modules())
    assert torch.allclose(model(x), before, atol=1e-5)
    assert set(model.state_dict()) == set(TinyViT().state_dict())
