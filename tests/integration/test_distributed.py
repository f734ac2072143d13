"""Two CPU processes (gloo) through tools/dist_train.sh: every rank must end identical."""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from .conftest import REPO, tiny_config


@pytest.mark.parametrize('accumulate', [1, 2])
def test_two_process_training_keeps_ranks_identical(ade_root, tmp_path, accumulate):
    work_dir = tmp_path / 'work'
    cfg = tiny_config(ade_root, str(work_dir), max_iters=4, checkpoint_interval=4)
    cfg.custom_imports = dict(imports=['snella_seg', 'tests.integration.rank_state_hook'], allow_failed_imports=False)
    cfg.custom_hooks.append(dict(type='RankStateDumpHook'))
    cfg.optim_wrapper.accumulative_counts = accumulate
    config = tmp_path / 'dist_config.py'
    cfg.dump(str(config))
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=REPO, PORT=str(29500 + os.getpid() % 1000 + accumulate),
               OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    result = subprocess.run(['bash', osp.join(REPO, 'tools', 'dist_train.sh'), str(config), '2',
                             '--work-dir', str(work_dir)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0 = torch.load(work_dir / 'rank0_state.pth', weights_only=True)
    rank1 = torch.load(work_dir / 'rank1_state.pth', weights_only=True)
    assert rank0['rank_checks'] > 0  # the hook compared ranks at every reallocation
    assert rank0['sparsity'] == rank1['sparsity']
    assert len(set(rank0['sparsity'].values())) > 1
    for name, tensor in rank0['params'].items():
        assert torch.equal(tensor, rank1['params'][name]), name
    for name, tensors in rank0['sensitivity'].items():
        assert all(torch.equal(a, b) for a, b in zip(tensors, rank1['sensitivity'][name]))
