"""Checkpoints load without arbitrary unpickling; files that would need it are refused with a reason."""
import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

from snella_seg.utils.checkpoint_loading import UnsafeCheckpointError, load_checkpoint_safely
from tests.helpers.log_capture import log_from_here


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


def test_a_refused_training_checkpoint_is_told_to_resume_with_the_escape(tmp_path):
    path = tmp_path / 'iter_40.pth'
    torch.save({'message_hub': {'log_scalars': {'loss': HistoryBuffer()}}, 'extra': Payload()}, path)
    advice = r'(?s)looks like a training checkpoint.*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1'
    with pytest.raises(UnsafeCheckpointError, match=advice):
        load_checkpoint_safely(str(path))


def test_refused_pretrained_weights_are_told_to_be_re_saved_as_tensors(tmp_path):
    path = tmp_path / 'backbone.pth'
    torch.save({'w': torch.ones(1), 'extra': Payload()}, path)
    with pytest.raises(UnsafeCheckpointError) as refusal:
        load_checkpoint_safely(str(path))
    advice = str(refusal.value)
    assert 'looks like a training checkpoint' not in advice
    assert advice.index('If it is pretrained weights') < advice.index('If it is a training checkpoint')


@pytest.mark.parametrize('value', ['1', 'true'])
def test_torchs_variable_loads_a_trusted_file_fully_with_a_warning(value, tmp_path, monkeypatch, capsys):
    path = tmp_path / 'trusted.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'extra': Payload()}, path)
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', value)
    log = log_from_here(capsys)
    assert isinstance(load_checkpoint_safely(str(path))['extra'], Payload)
    assert 'trusted.pth with full unpickling' in log()


def test_safetensors_and_missing_files(tmp_path):
    from safetensors.torch import save_file
    save_file({'w': torch.arange(3.0)}, str(tmp_path / 'w.safetensors'))
    assert torch.equal(load_checkpoint_safely(str(tmp_path / 'w.safetensors'))['w'], torch.arange(3.0))
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        load_checkpoint_safely(str(tmp_path / 'nowhere.pth'))
