"""The per-step cost a GPU pays beyond arithmetic, counted on the CPU: host syncs must not grow with the model."""
import pytest

from dispatch_counter import kernels_as_on_a_gpu
from profile_step import PHASES, add_launch_ratios, format_table, narrow_encoder, profile_config, with_lora_baselines

from tests.helpers.paths import DEMO_CONFIG, REPO

# What one training iteration reads back from the device, whatever the depth (docs/benchmark.md): mmengine's log
# reads 5 loss and accuracy values, mmseg's accuracy indexes by a mask twice per head (4), the finite-gradient guard
# and the importance update check once each, and a reallocation reads all scores at once.
MAX_STEP_SYNCS = 12
DEEPER = {'model.backbone.backbone.arch.depth': 8, 'model.backbone.backbone.out_indices': (1, 3, 5, 7)}


@pytest.fixture(scope='module')
def profiles():
    with kernels_as_on_a_gpu():
        return [profile_config(DEMO_CONFIG, crop=32, iterations=4),
                profile_config(DEMO_CONFIG, crop=32, iterations=4, cfg_options=DEEPER)]


def test_a_training_step_makes_the_same_few_host_syncs_at_any_depth(profiles):
    shallow, deep = profiles
    assert deep['adapted_layers'] == 2 * shallow['adapted_layers']
    assert deep['train_step']['host_syncs'] == shallow['train_step']['host_syncs'] <= MAX_STEP_SYNCS


def test_an_eval_forward_of_the_backbone_makes_no_host_sync(profiles):
    assert all(p['backbone_eval_forward']['host_syncs'] == 0 for p in profiles)


def test_optimizer_groups_do_not_grow_with_depth(profiles):
    shallow, deep = profiles
    assert deep['optimizer_groups'] == shallow['optimizer_groups']
    assert deep['optimizer_tensors'] > shallow['optimizer_tensors']


def test_the_table_has_a_row_per_config(profiles):
    table = format_table(profiles).splitlines()
    assert len(table) == 3 and table[1].startswith('snella_vit-tiny_demo-ade20k.py')
    assert 'launches per iteration' in table[0]


def test_a_step_launches_fewer_kernels_than_it_dispatches_operators(profiles):
    step = profiles[0]['train_step']
    assert 0 < step['launches'] < step['operators']


def test_each_snella_config_is_profiled_beside_its_lora_baseline():
    snella, lora = f'{REPO}/configs/snella_vit-b_ade20k.py', f'{REPO}/configs/baselines/lora_vit-b_ade20k.py'
    assert with_lora_baselines([snella]) == [snella, lora]
    assert with_lora_baselines([snella, lora]) == [snella, lora]
    assert with_lora_baselines([DEMO_CONFIG]) == [DEMO_CONFIG]  # no baseline shipped for the demo


def test_launches_are_given_as_a_ratio_to_loras_of_the_same_setting():
    def row(config, launches):
        return {'config': config, 'train_step': {'launches': launches}}
    rows = [row('configs/snella_vit-b_ade20k.py', 260), row('configs/baselines/lora_vit-b_ade20k.py', 200),
            row('configs/snella_vit-l_ade20k.py', 500)]
    add_launch_ratios(rows)
    assert [r.get('launches_vs_lora') for r in rows] == [1.3, 1.0, None]


def test_a_steps_launches_are_split_into_its_phases(profiles):
    step = profiles[0]['train_step']
    phases = step['launches_by_phase']
    assert {'forward', 'backward', 'optimizer'} <= set(phases) <= set(PHASES)
    assert sum(phases.values()) == step['launches'] and all(n > 0 for n in phases.values())


def test_full_fine_tuning_and_frozen_encoders_narrow_too():
    from mmengine.config import Config
    for method in ('full', 'frozen'):
        cfg = Config.fromfile(f'{REPO}/configs/baselines/{method}_vit-b_ade20k.py')
        narrow_encoder(cfg, 32)
        assert cfg.model.backbone.arch['embed_dim'] == 32 and cfg.model.backbone.type == 'TimmViT'
        assert cfg.model.decode_head.channels == 32
