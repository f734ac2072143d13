"""The per-step cost a GPU pays beyond arithmetic, counted on the CPU: host syncs must not grow with the model."""
import pytest

from dispatch_counter import kernels_as_on_a_gpu
from profile_step import format_table, profile_config

from tests.helpers.paths import DEMO_CONFIG

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
