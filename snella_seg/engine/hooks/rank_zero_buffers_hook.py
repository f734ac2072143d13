"""Every rank validates with rank 0's buffers, the ones its checkpoints hold.

On CPU processes SyncBN becomes plain BN (no cross-rank statistics), so each rank's running mean and variance follow
its own batches. Validation shards the data over the ranks and mmengine's ``val_step`` bypasses DDP's forward, so
DDP never syncs buffers for it (not even with ``broadcast_buffers=True``, which syncs before training forwards
only): the in-training mIoU mixed ranks' statistics while ``tools/test.py`` evaluates rank 0's saved ones.
"""
import torch
from mmengine.dist import broadcast, get_world_size
from mmengine.hooks import Hook
from mmengine.runner import Runner
from mmseg.registry import HOOKS

from .hook_utils import unwrap_model


@HOOKS.register_module()
class RankZeroBuffersHook(Hook):
    """Broadcast rank 0's model buffers (BN running statistics and all others) to every rank before validation."""

    def before_val(self, runner: Runner) -> None:
        """Broadcast the buffers, so every rank's validation shard sees those of rank 0's checkpoint."""
        if get_world_size() == 1:
            return
        model = unwrap_model(runner)
        with torch.no_grad():
            for buffer in model.buffers():
                broadcast(buffer, src=0)
