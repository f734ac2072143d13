"""Checkpoints holding numpy objects load whichever numpy (1.x: ``numpy.core``, 2.x: ``numpy._core``) wrote them."""
import io

import numpy as np
import torch

from snella_seg.utils.checkpoint_loading import NUMPY_CORE_PACKAGES, load_checkpoint_safely, numpy_multiarray


def _legacy_pickle(obj) -> bytes:
    """``torch.save``'s pre-zip format: one plain pickle stream, whose module names can be rewritten in place."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


def test_numpy_multiarray_is_the_module_numpy_pickles_arrays_with():
    assert np.zeros(2).__reduce__()[0] is numpy_multiarray()._reconstruct


def test_a_checkpoint_written_under_the_other_numpy_package_name_loads(tmp_path):
    written = _legacy_pickle({'seed': np.int64(3), 'array': np.arange(3.0)})
    installed, other = NUMPY_CORE_PACKAGES if b'numpy._core' in written else NUMPY_CORE_PACKAGES[::-1]
    path = tmp_path / 'other_numpy.pth'
    path.write_bytes(written.replace(installed.encode() + b'.', other.encode() + b'.'))
    loaded = load_checkpoint_safely(str(path))
    assert loaded['seed'] == 3
    assert np.array_equal(loaded['array'], np.arange(3.0))
