"""SNELLAOptimWrapperConstructor: the optimizer holds exactly the trainable parameters, without decay on scalars."""
import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

from tests.helpers.tiny_backbone import build


def test_optimizer_holds_exactly_trainable_parameters_and_no_decay_on_scalars():
    init_default_scope('mmseg')
    model = torch.nn.ModuleDict(dict(backbone=build(), decode_head=torch.nn.Linear(16, 4)))
    wrapper = build_optim_wrapper(model, dict(
        type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
        constructor='SNELLAOptimWrapperConstructor',
        paramwise_cfg=dict(custom_keys={'decode_head': dict(lr_mult=10.0)})))
    in_optimizer = [p for g in wrapper.optimizer.param_groups for p in g['params']]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in in_optimizer} == {id(p) for p in trainable}
    assert len(in_optimizer) == len(trainable)
    by_id = {id(p): g for g in wrapper.optimizer.param_groups for p in g['params']}
    delta = model.backbone.backbone.blocks[0].mlp.fc1.deltas[0]
    assert by_id[id(delta.alpha)]['weight_decay'] == 0.0
    assert by_id[id(delta.in_factors)]['weight_decay'] == 0.05
    assert by_id[id(model.decode_head.weight)]['lr'] == pytest.approx(1e-2)
    assert by_id[id(model.decode_head.bias)]['weight_decay'] == 0.0
