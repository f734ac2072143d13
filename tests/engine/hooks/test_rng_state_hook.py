"""RNGStateHook: random states survive a weights-only checkpoint, and only a resume restores them."""
import logging
import random
from types import SimpleNamespace

import numpy as np
import torch

from snella_seg.engine.hooks.rng_state_hook import CHECKPOINT_KEY as RNG_KEY
from snella_seg.engine.hooks.rng_state_hook import RNGStateHook, capture_rng_states, restore_rng_states
from snella_seg.utils.checkpoint_loading import load_checkpoint_safely


def test_load_from_does_not_restore_rng_states():
    hook = RNGStateHook()
    loop = SimpleNamespace(iter=0, dataloader_iterator=iter([]))
    runner = SimpleNamespace(_resume=False, train_loop=loop, logger=logging.getLogger(__name__))
    hook.after_load_checkpoint(runner, {RNG_KEY: {'world_size': 1, 'ranks': [capture_rng_states()]}})
    iterator = loop.dataloader_iterator
    hook.before_train(runner)
    assert loop.dataloader_iterator is iterator


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    torch.save({RNG_KEY: capture_rng_states()}, tmp_path / 'states.pth')
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_states(load_checkpoint_safely(str(tmp_path / 'states.pth'))[RNG_KEY])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
