"""Checkpoints load without arbitrary unpickling; files that would need it are refused with a reason."""
import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

from snella_seg.utils.checkpoint_loading import UnsafeCheckpointError, load_checkpoint_safely


class Payload:
    """Stands for any object whose unpickling could run code."""


def test_mmengine_style_checkpoint_loads_with_weights_only(tmp_path):
    buffer = HistoryBuffer()
    buffer.update(1.5)
    path = tmp_path / 'run.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'message_hub': {'log_scalars': {'loss': buffer},
                'runtime_info': {'seed': np.int64(3), 'arr': np.zeros(2)}}}, path)
    loaded = load_checkpoint_safely(str(path))
    assert torch.equal(loaded['state_dict']['w'], torch.ones(2))
    assert loaded['message_hub']['log_scalars']['loss'].current() == 1.5


def test_arbitrary_objects_are_refused_and_named(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'extra': Payload()}, path)
    with pytest.raises(UnsafeCheckpointError, match='Payload'):
        load_checkpoint_safely(str(path))


def test_safetensors_and_missing_files(tmp_path):
    from safetensors.torch import save_file
    save_file({'w': torch.arange(3.0)}, str(tmp_path / 'w.safetensors'))
    assert torch.equal(load_checkpoint_safely(str(tmp_path / 'w.safetensors'))['w'], torch.arange(3.0))
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        load_checkpoint_safely(str(tmp_path / 'nowhere.pth'))
