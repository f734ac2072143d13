"""Fixtures shared by every test folder: generated data in each supported layout (session-scoped, so each is made
once per run), a checkpoint of a real 2-iteration Runner run, and tiny config and checkpoint files."""
import os.path as osp

import snella_seg  # noqa: F401  (installs the mmcv ops stand-in before mmseg imports)
import pytest
import torch
from mmseg.apis import init_model
from mmseg.datasets import ADE20KDataset

from snella_seg.datasets.demo_data import make_ade20k_like, make_pascal_context_like

from tests.helpers.configs import pretrained_config, save_tiny_vit, tiny_config


# The modules that take minutes, longest first. They start the run so that, spread over pytest-xdist workers
# (tools/run_tests.sh), none of them is left running alone at the end.
LONGEST_MODULES = (
    'tools/analysis/test_gpu_check_rehearsal.py',
    'tools/analysis/test_benchmark.py',
    'docs/test_custom_dataset_tutorial.py',
    'integration/test_distributed.py',
    'integration/test_resume.py',
    'models/test_peft_backbone.py',
    'configs/test_short_schedules.py',
)


def pytest_collection_modifyitems(items):
    """Run the longest modules first, keeping the order of everything else."""
    def rank(item):
        path = item.nodeid.split('::', 1)[0]
        for index, module in enumerate(LONGEST_MODULES):
            if path.endswith(module):
                return index
        return len(LONGEST_MODULES)
    items.sort(key=rank)


@pytest.fixture(scope='session', autouse=True)
def label_scans_cached_in_a_scratch_folder(tmp_path_factory):
    """Label-scan results of generated data go to a scratch folder (subprocesses inherit it), not ~/.cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv('XDG_CACHE_HOME', str(tmp_path_factory.mktemp('cache')))
    yield
    patch.undo()


@pytest.fixture(scope='session')
def ade_root(tmp_path_factory):
    return make_ade20k_like(str(tmp_path_factory.mktemp('ade')), num_train=8, num_val=4, size=64, seed=0)


@pytest.fixture(scope='session')
def trained_checkpoint(ade_root, tmp_path_factory):
    """A checkpoint of a 2-iteration tiny run, for tests that only need something to load."""
    from mmengine.runner import Runner
    work_dir = str(tmp_path_factory.mktemp('trained'))
    Runner.from_cfg(tiny_config(ade_root, work_dir, max_iters=2, checkpoint_interval=2)).train()
    return osp.join(work_dir, 'iter_2.pth')


@pytest.fixture(scope='session')
def pascal_root(tmp_path_factory):
    return make_pascal_context_like(str(tmp_path_factory.mktemp('pascal')), num_train=8, num_val=4, size=64,
                                    seed=0)


@pytest.fixture(scope='session')
def kvasir_root(tmp_path_factory):
    """Kvasir-SEG layout: JPEG images and noisy 3-channel JPEG masks (a bright disc is the 'polyp')."""
    import cv2
    import numpy as np
    root = tmp_path_factory.mktemp('kvasir')
    (root / 'images').mkdir()
    (root / 'masks').mkdir()
    rng = np.random.default_rng(0)
    ids = [f'cju{i:04d}' for i in range(8)]
    for name in ids:
        image = rng.integers(60, 120, (64, 64, 3), dtype=np.uint8)
        mask = np.zeros((64, 64, 3), np.uint8)
        centre, radius = tuple(int(v) for v in rng.integers(16, 48, 2)), int(rng.integers(6, 14))
        cv2.circle(image, centre, radius, (40, 40, 200), -1)
        cv2.circle(mask, centre, radius, (255, 255, 255), -1)
        cv2.imwrite(str(root / 'images' / f'{name}.jpg'), image)
        cv2.imwrite(str(root / 'masks' / f'{name}.jpg'), mask)
    (root / 'train.txt').write_text('\n'.join(ids[:6]) + '\n')
    (root / 'val.txt').write_text('\n'.join(ids[6:]) + '\n')
    return str(root)


@pytest.fixture
def config_file(ade_root, tmp_path):
    """``tiny_config`` dumped to a file, as the tools take it."""
    path = tmp_path / 'config.py'
    tiny_config(ade_root, str(tmp_path / 'work')).dump(str(path))
    return str(path)


@pytest.fixture
def delta_checkpoint(ade_root, tmp_path):
    """(config file, delta-only checkpoint) of a model on a pretrained base whose updates, neck, heads and head
    buffers all moved away from their initial values, as training moves them."""
    cfg = pretrained_config(ade_root, str(tmp_path / 'work'), save_tiny_vit(tmp_path / 'vit.pth', seed=1))
    config = str(tmp_path / 'pretrained_config.py')
    cfg.dump(config)
    model = init_model(config, None, device='cpu')
    model.init_weights()
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
        for name, buffer in model.named_buffers():
            if not name.startswith('backbone.') and buffer.is_floating_point():  # BN statistics of neck and heads
                buffer.add_(0.1)
    checkpoint = str(tmp_path / 'delta.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': dict(ADE20KDataset.METAINFO)}},
               checkpoint)
    return config, checkpoint
