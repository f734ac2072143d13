"""The real mmengine Runner on a tiny ViT + UperNet with SNELLA and generated data."""
import glob
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from snella_seg.apis import test as run_test
from snella_seg.apis import train
from snella_seg.engine.hooks.allocator_hook import CHECKPOINT_KEY
from snella_seg.utils.checkpoint_loading import load_checkpoint_safely

from tests.helpers.configs import pretrained_config, save_tiny_vit, tiny_config
from tests.helpers.paths import REPO


def frozen_and_trainable(model):
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return frozen, trainable


def sparsities(model):
    return {n: float(b) for n, b in model.named_buffers() if n.endswith('.sparsity')}


@pytest.fixture(scope='module')
def trained(ade_root, tmp_path_factory):
    work_dir = str(tmp_path_factory.mktemp('train'))
    runner = Runner.from_cfg(tiny_config(ade_root, work_dir))
    before_frozen, before_trainable = frozen_and_trainable(runner.model)
    runner.train()
    return runner, work_dir, before_frozen, before_trainable


def test_training_touches_only_the_updates_and_heads(trained):
    runner, _, before_frozen, before_trainable = trained
    after_frozen, after_trainable = frozen_and_trainable(runner.model)
    assert before_frozen and all(torch.equal(before_frozen[n], after_frozen[n]) for n in before_frozen)
    assert any(not torch.equal(before_trainable[n], after_trainable[n]) for n in before_trainable)
    backbone_trainable = [n for n in after_trainable if n.startswith('backbone.')]
    assert backbone_trainable and all('.deltas.' in n for n in backbone_trainable)


def test_optimizer_holds_exactly_the_trainable_parameters(trained):
    runner = trained[0]
    in_optimizer = {id(p) for g in runner.optim_wrapper.optimizer.param_groups for p in g['params']}
    assert in_optimizer == {id(p) for p in runner.model.parameters() if p.requires_grad}
    state = runner.optim_wrapper.optimizer.state
    assert all(p.requires_grad for p in runner.model.parameters() if p in state)


def test_allocator_reached_the_target_and_wrote_its_outputs(trained):
    runner, work_dir, *_ = trained
    hook = next(h for h in runner.hooks if type(h).__name__ == 'SNELLAAllocatorHook')
    assert hook.allocator.overall_sparsity() == pytest.approx(0.6, abs=1e-3)
    assert hook.allocator.importance_updates == 6 and hook.allocator.reallocations > 0
    assert osp.getsize(osp.join(work_dir, 'snella_allocation.png')) > 10_000
    with open(osp.join(work_dir, 'snella_allocation.json')) as f:
        record = json.load(f)
    assert record['final']['sparsity'] == hook.allocator.sparsities()
    scalars = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    with open(scalars[0]) as f:
        logged = [json.loads(line) for line in f]
    assert any(k.startswith('snella_sparsity/') for row in logged for k in row)
    assert any('snella_sparsity' in row for row in logged)


def test_checkpoint_holds_allocator_state_and_loads_without_unpickling(trained):
    runner, work_dir, *_ = trained
    checkpoint = load_checkpoint_safely(osp.join(work_dir, 'iter_6.pth'))
    state = checkpoint[CHECKPOINT_KEY]
    assert set(state['sparsity']) == {n[:-len('.sparsity')] for n in sparsities(runner.model)}
    assert state['importance_updates'] == 6


def test_test_tool_reports_miou_and_writes_overlays(ade_root, trained, tmp_path):
    _, work_dir, *_ = trained
    cfg = tiny_config(ade_root, str(tmp_path / 'test'))
    metrics = run_test(cfg, osp.join(work_dir, 'iter_6.pth'), show_dir=str(tmp_path / 'show'))
    assert 0.0 <= metrics['mIoU'] <= 100.0
    assert len(glob.glob(str(tmp_path / 'show' / '**' / '*.png'), recursive=True)) == 4


def test_pascal_context_layout_trains(pascal_root, tmp_path):
    cfg = tiny_config(pascal_root, str(tmp_path), max_iters=2, checkpoint_interval=2)
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset.type = 'PascalContextDataset59'
        loader.dataset.data_prefix = dict(img_path='JPEGImages', seg_map_path='SegmentationClassContext')
    cfg.train_dataloader.dataset.ann_file = 'ImageSets/SegmentationContext/train.txt'
    cfg.val_dataloader.dataset.ann_file = 'ImageSets/SegmentationContext/val.txt'
    cfg.test_dataloader.dataset.ann_file = 'ImageSets/SegmentationContext/val.txt'
    cfg.model.decode_head.num_classes = cfg.model.auxiliary_head.num_classes = 59
    cfg.custom_hooks[0].update(init_warmup=0, final_warmup=1)
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 2
    assert 'val/mIoU' in runner.message_hub.log_scalars


def test_kvasir_polyp_config_trains_and_reports_mdice(kvasir_root, tmp_path):
    cfg = tiny_config(kvasir_root, str(tmp_path), max_iters=2, checkpoint_interval=2)
    polyp = Config.fromfile(osp.join(REPO, 'configs', 'snella_sam-b_kvasir-seg.py'))
    for loader, split in ((cfg.train_dataloader, 'train.txt'), (cfg.val_dataloader, 'val.txt'),
                          (cfg.test_dataloader, 'val.txt')):
        loader.dataset.update(type='KvasirSEGDataset', ann_file=split,
                              data_prefix=dict(img_path='images', seg_map_path='masks'))
        loader.dataset.pop('reduce_zero_label', None)
        loader.dataset.pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadBinaryMask'),
                                   dict(type='Resize', scale=(64, 64), keep_ratio=False),
                                   dict(type='PackSegInputs')]
    cfg.val_evaluator = cfg.test_evaluator = polyp.val_evaluator
    cfg.model.decode_head.num_classes = cfg.model.auxiliary_head.num_classes = 2
    cfg.custom_hooks[0].update(init_warmup=0, final_warmup=1)
    runner = train(cfg)
    assert runner.iter == 2
    assert {'val/mDice', 'val/mIoU'} <= set(runner.message_hub.log_scalars)


@pytest.mark.parametrize('update_buffers', [False, True])
def test_ema_model_evaluates_with_the_live_allocation(ade_root, tmp_path, update_buffers):
    cfg = tiny_config(ade_root, str(tmp_path), max_iters=4, checkpoint_interval=4)
    cfg.custom_hooks.append(dict(type='EMAHook', momentum=0.5, update_buffers=update_buffers))
    runner = Runner.from_cfg(cfg)
    runner.train()
    ema = next(h for h in runner.hooks if type(h).__name__ == 'EMAHook').ema_model.module
    assert sparsities(ema) == sparsities(runner.model)


@pytest.mark.parametrize('update_buffers', [False, True])
def test_ema_model_of_a_delta_only_backbone_holds_the_pretrained_base(ade_root, tmp_path, update_buffers):
    """Regression: EMAHook copies the model before its weights load, and with update_buffers=True averages a
    delta-only state dict that leaves the frozen base out, so the EMA model kept a random base."""
    base = save_tiny_vit(tmp_path / 'base.pth', seed=1)
    cfg = pretrained_config(ade_root, str(tmp_path / 'work'), base, max_iters=2, checkpoint_interval=2)
    cfg.custom_hooks.append(dict(type='EMAHook', momentum=0.5, update_buffers=update_buffers))
    runner = Runner.from_cfg(cfg)
    runner.train()
    ema = dict(next(h for h in runner.hooks if type(h).__name__ == 'EMAHook').ema_model.module.named_parameters())
    frozen = [(n, p) for n, p in runner.model.named_parameters() if not p.requires_grad]
    assert frozen and all(torch.equal(ema[n], p) for n, p in frozen)


def test_demo_writes_an_overlay_per_image(ade_root, trained_checkpoint, tmp_path):
    from snella_seg.apis import predict_overlays
    config = tmp_path / 'config.py'
    tiny_config(ade_root, str(tmp_path / 'work')).dump(str(config))
    images = osp.join(ade_root, 'images', 'validation')
    written = predict_overlays(str(config), trained_checkpoint, [images], str(tmp_path / 'overlays'))
    assert len(written) == 4 and all(osp.getsize(p) > 1000 for p in written)
    with pytest.raises(FileNotFoundError, match='neither an image file nor a folder'):
        predict_overlays(str(config), trained_checkpoint, [str(tmp_path / 'missing.jpg')], str(tmp_path / 'o'))
