"""Save every rank's random-number-generator states in checkpoints, so that ``--resume`` continues bit-exactly.

mmengine saves the seed but not the generators' positions: a resumed run would redraw dropout, drop-path and the
data augmentation from other numbers than the uninterrupted run. This hook stores, per rank, the states that
training draws from (torch CPU, CUDA of the current device, numpy's global and Python's ``random``) and puts them
back exactly where the uninterrupted run drew its next numbers:

* The states are taken at the end of the training iteration that writes the checkpoint, before CheckpointHook
  (``priority`` 'LOW' runs before its 'VERY_LOW'). ``Runner.save_checkpoint`` runs on rank 0 only, so the other
  ranks' states are gathered beforehand, in ``after_train_iter`` of an iteration at which a CheckpointHook saves
  (and in ``before_val``, for best checkpoints written during validation).
* Validation is RNG-neutral: the states are put back after it, because the uninterrupted run validates right after
  the checkpoint and the resumed run does not.
* On resume, IterBasedTrainLoop replays the data iterator ``k`` times (running the data pipeline, which draws
  random numbers in the main process when ``num_workers=0``) and then fetches batch ``k + 1`` before
  ``before_train_iter``; the states are therefore restored right before that fetch, by a stand-in for the loop's
  data iterator. Dataloader workers are seeded by mmengine's ``worker_init_fn`` from the config's seed alone and
  the replay feeds each worker the same samples again, so their generators also end where they were.
"""
import random
import warnings
from typing import List, Optional

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.hooks import CheckpointHook, Hook
from mmengine.hooks.hook import DATA_BATCH
from mmengine.runner import IterBasedTrainLoop, Runner
from mmseg.registry import HOOKS

CHECKPOINT_KEY = 'rng_state'


def capture_rng_states() -> dict:
    """Capture the states of the generators training draws from in this process.

    Returns:
        The torch CPU, CUDA (current device; None without CUDA), numpy and Python ``random`` states, as tensors and
        numbers, so that checkpoints holding them load with ``weights_only=True``.
    """
    _, numpy_keys, numpy_pos, has_gauss, cached_gaussian = np.random.get_state()
    python_version, python_internal, python_gauss = random.getstate()
    return {
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        'numpy': {'keys': torch.from_numpy(numpy_keys.astype(np.int64)), 'pos': int(numpy_pos),
                  'has_gauss': int(has_gauss), 'cached_gaussian': float(cached_gaussian)},
        'python': {'version': python_version, 'internal': torch.tensor(python_internal, dtype=torch.int64),
                   'gauss_next': python_gauss},
    }


def restore_rng_states(states: dict) -> None:
    """Put back the generator states that ``capture_rng_states`` took.

    A CUDA state is skipped, with a warning, where CUDA is not available.

    Args:
        states: What ``capture_rng_states`` returned; its tensors may come back on the GPU from a checkpoint.
    """
    torch.set_rng_state(states['torch'].cpu())
    if states['cuda'] is not None:
        if not torch.cuda.is_available():
            warnings.warn('the checkpoint holds a CUDA generator state but CUDA is not available: GPU random '
                          'numbers are not restored, the resumed run differs from an uninterrupted one')
        else:
            torch.cuda.set_rng_state(states['cuda'].cpu())
    numpy = states['numpy']
    np.random.set_state(('MT19937', numpy['keys'].cpu().numpy().astype(np.uint32), numpy['pos'],
                         numpy['has_gauss'], numpy['cached_gaussian']))
    python = states['python']
    random.setstate((python['version'], tuple(int(v) for v in python['internal'].tolist()), python['gauss_next']))


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Every rank's RNG states in every checkpoint, restored on ``--resume``; validation leaves them untouched.

    Takes no arguments: it saves whenever a CheckpointHook saves (interval, last and best checkpoints) and
    restores only on ``--resume`` (``load_from`` starts a new run from the config's seed). Bit-exact continuation
    also needs a fixed ``randomness = dict(seed=...)``, the same number of processes and ``IterBasedTrainLoop``;
    otherwise it warns and training continues. Its ``priority`` ('LOW') must stay above CheckpointHook's.
    """

    priority = 'LOW'  # after_train_iter must run before CheckpointHook ('VERY_LOW') saves

    def __init__(self) -> None:
        self._checkpoint_states: Optional[List[dict]] = None  # every rank's, for a checkpoint written now
        self._states_before_val: Optional[dict] = None
        self._resumed_states: Optional[dict] = None  # this rank's, from the checkpoint being resumed

    # -------------------------------------------------------------------------------------------- saving
    def after_train_iter(self, runner: Runner, batch_idx: int, data_batch: DATA_BATCH = None,
                         outputs: Optional[dict] = None) -> None:
        """Gather every rank's states when a CheckpointHook saves after this iteration (it saves on rank 0 only)."""
        self._checkpoint_states = _gather(capture_rng_states()) if _checkpoint_due(runner) else None

    def before_val(self, runner: Runner) -> None:
        """Take the states validation must leave untouched, and gather them for a best checkpoint it may write."""
        self._states_before_val = capture_rng_states()
        self._checkpoint_states = _gather(self._states_before_val)

    def after_val(self, runner: Runner) -> None:
        """Put back the states validation started from: a resumed run does not validate here, yet draws the same."""
        if self._states_before_val is not None:
            restore_rng_states(self._states_before_val)
            self._states_before_val = None

    def before_save_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        """Store every rank's states in the checkpoint, or warn that this checkpoint cannot resume bit-exactly."""
        states = self._checkpoint_states
        if states is None and get_world_size() == 1:
            states = [capture_rng_states()]
        if states is None:
            runner.logger.warning(
                'RNGStateHook: a checkpoint is written at a point where the ranks did not gather their RNG states '
                '(only CheckpointHook\'s interval, last and best checkpoints are foreseen); it holds none, so a '
                'resume from it is not bit-identical to an uninterrupted run')
            return
        checkpoint[CHECKPOINT_KEY] = {'world_size': len(states), 'ranks': states}

    # ------------------------------------------------------------------------------------------ resuming
    def after_load_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        """On ``--resume``, keep this rank's saved states for ``before_train``; warn when there are none to use."""
        if not getattr(runner, '_resume', False):
            return  # load_from starts a new run: its randomness comes from the config's seed
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None:
            runner.logger.warning('RNGStateHook: the resumed checkpoint holds no RNG states (written without this '
                                  'hook): training continues, but not bit-identical to an uninterrupted run')
        elif saved['world_size'] != get_world_size():
            runner.logger.warning(f'RNGStateHook: the checkpoint was written by {saved["world_size"]} processes and '
                                  f'this run has {get_world_size()}: RNG states are not restored, training continues '
                                  'but not bit-identical to an uninterrupted run')
        else:
            self._resumed_states = saved['ranks'][get_rank()]

    def before_train(self, runner: Runner) -> None:
        """Arrange the restore for right before the first new batch, after the loop's fast-forward."""
        if self._resumed_states is None:
            return
        loop = runner.train_loop
        if not isinstance(loop, IterBasedTrainLoop):
            runner.logger.warning(f'RNGStateHook restores RNG states for IterBasedTrainLoop only, not '
                                  f'{type(loop).__name__}: training continues from the current states')
        else:
            loop.dataloader_iterator = _RestoreBeforeNextBatch(loop, self._resumed_states)
        self._resumed_states = None


class _RestoreBeforeNextBatch:
    """Stand in for the train loop's data iterator through the resume fast-forward.

    It restores the RNG states right before the first new batch is fetched, then puts the loop's own iterator back.
    """

    def __init__(self, loop: IterBasedTrainLoop, states: dict) -> None:
        self._loop = loop
        self._iterator = loop.dataloader_iterator
        self._states = states
        self._batches_to_replay = loop.iter

    def __iter__(self):
        return self

    def __next__(self):
        if self._batches_to_replay > 0:
            self._batches_to_replay -= 1
            return next(self._iterator)
        restore_rng_states(self._states)
        self._loop.dataloader_iterator = self._iterator
        return next(self._iterator)


def _gather(states: dict) -> List[dict]:
    """Return every rank's ``states``, by rank."""
    return all_gather_object(states) if get_world_size() > 1 else [states]


def _checkpoint_due(runner: Runner) -> bool:
    """Return whether a CheckpointHook saves at the end of this iteration (its own rule, asked before it runs)."""
    for hook in runner.hooks:
        if isinstance(hook, CheckpointHook) and not hook.by_epoch:
            if hook.every_n_train_iters(runner, hook.interval, hook.save_begin) or (
                    hook.save_last and hook.is_last_train_iter(runner)):
                return True
    return False


