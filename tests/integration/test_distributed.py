"""Two CPU processes (gloo) through tools/dist_train.sh: every rank must end identical, and every run exit cleanly."""
import pytest
import torch

from tests.helpers.configs import tiny_config
from tests.helpers.tools import dist_train, failure_report


@pytest.mark.parametrize('accumulate', [1, 2])
def test_two_process_training_keeps_ranks_identical(ade_root, tmp_path, accumulate):
    work_dir = tmp_path / 'work'
    cfg = tiny_config(ade_root, str(work_dir), max_iters=4, checkpoint_interval=4)
    cfg.custom_imports = dict(imports=['snella_seg', 'tests.helpers.rank_state_hook'], allow_failed_imports=False)
    cfg.custom_hooks.append(dict(type='RankStateDumpHook'))
    cfg.optim_wrapper.accumulative_counts = accumulate
    config = tmp_path / 'dist_config.py'
    cfg.dump(str(config))
    result = dist_train(str(config), str(work_dir))
    assert result.returncode == 0, failure_report(result)
    rank0 = torch.load(work_dir / 'rank0_state.pth', weights_only=True)
    rank1 = torch.load(work_dir / 'rank1_state.pth', weights_only=True)
    assert rank0['rank_checks'] > 0  # the hook compared ranks at every reallocation
    assert rank0['sparsity'] == rank1['sparsity']
    assert len(set(rank0['sparsity'].values())) > 1
    for name, tensor in rank0['params'].items():
        assert torch.equal(tensor, rank1['params'][name]), name
    for name, tensors in rank0['sensitivity'].items():
        assert all(torch.equal(a, b) for a, b in zip(tensors, rank1['sensitivity'][name]))


def test_two_process_train_and_repeated_resumes_all_exit_cleanly(ade_root, tmp_path):
    """Each run ends with exit code 0: no rank aborts at exit after its work is done (once 1 in 2 resumes did)."""
    work_dir = str(tmp_path / 'work')
    for iterations in (1, 2, 3, 4):
        cfg = tiny_config(ade_root, work_dir, max_iters=iterations, checkpoint_interval=1)
        cfg.custom_hooks[0].update(total_steps=4, init_warmup=0, final_warmup=1)
        cfg.train_dataloader.update(num_workers=1, persistent_workers=True)
        cfg.resume_with_changed_schedule = True  # each resume extends the schedule on purpose
        config = str(tmp_path / f'config_{iterations}.py')
        cfg.dump(config)
        result = dist_train(config, work_dir, *(('--resume',) if iterations > 1 else ()))
        assert result.returncode == 0, failure_report(result)
        assert f'Saving checkpoint at {iterations} iterations' in result.stdout + result.stderr
