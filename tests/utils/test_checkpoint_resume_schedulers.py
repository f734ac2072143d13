"""Every checkpoint a plain mmengine Runner writes resumes once snella_seg's loader is installed: each of
mmengine's parameter schedulers, with mmengine's EMA hook, best-checkpoint tracking and a clipped optimizer."""
import pytest
import torch
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.optim import scheduler as mmengine_schedulers
from mmengine.runner import Runner

import snella_seg  # noqa: F401  (installs the weights-only loader under test)

# Arguments each scheduler family needs beyond the defaults, for a 2-epoch run of 2 iterations per epoch.
FAMILY_ARGUMENTS = {
    'Constant': dict(end=2), 'CosineAnnealing': dict(T_max=2), 'Exponential': dict(gamma=0.9),
    'Linear': dict(end=2), 'MultiStep': dict(milestones=[1]), 'Step': dict(step_size=1), 'Poly': dict(end=2),
    'OneCycle': dict(eta_max=0.1, total_steps=4, by_epoch=False), 'ReduceOnPlateau': dict(monitor='loss'),
    'CosineRestart': dict(periods=[1, 1], restart_weights=[1, 0.5], eta_min=0.0)}
SCHEDULERS = sorted(name for name in mmengine_schedulers.__all__
                    if name.endswith(('LR', 'Momentum', 'ParamScheduler')) and name[0] != '_')


def scheduler_config(name: str) -> dict:
    family = next(prefix for prefix in FAMILY_ARGUMENTS if name.startswith(prefix))
    config = dict(type=name, **FAMILY_ARGUMENTS[family])
    if name.endswith('ParamScheduler'):
        config['param_name'] = 'lr'
    return config


class LinearModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        output = self.linear(inputs)
        if mode == 'loss':
            return dict(loss=output.pow(2).mean())
        return [dict(loss=value) for value in output.pow(2).squeeze(1)] if mode == 'predict' else output


class Ramp(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return dict(inputs=torch.full((2,), float(index)))


class MeanLoss(BaseMetric):
    def process(self, data_batch, data_samples):
        self.results.extend(float(sample['loss']) for sample in data_samples)

    def compute_metrics(self, results):
        return dict(loss=sum(results) / len(results))


def runner(work_dir: str, scheduler: str, max_epochs: int, resume: bool = False) -> Runner:
    loader = dict(dataset=Ramp(), sampler=dict(type='DefaultSampler', shuffle=False), batch_size=2,
                  collate_fn=dict(type='default_collate'))
    return Runner(
        model=LinearModel(), work_dir=work_dir, train_dataloader=loader, val_dataloader=loader,
        val_evaluator=[MeanLoss()], val_cfg=dict(), train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9), clip_grad=dict(max_norm=1.0)),
        param_scheduler=scheduler_config(scheduler), custom_hooks=[dict(type='EMAHook')],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1, save_best='loss', rule='less')),
        resume=resume, experiment_name=f'{scheduler}-{max_epochs}-{resume}')


@pytest.mark.parametrize('scheduler', SCHEDULERS)
def test_a_run_with_each_mmengine_scheduler_resumes(scheduler, tmp_path):
    runner(str(tmp_path), scheduler, max_epochs=1).train()
    resumed = runner(str(tmp_path), scheduler, max_epochs=2, resume=True)
    resumed.train()
    assert resumed.epoch == 2 and resumed.iter == 4
