"""Tiny stand-ins for the data set archives, laid out as each publisher's release is (names and folders)."""
import io
import tarfile
import zipfile
from pathlib import Path
from typing import Dict, Sequence

import cv2
import numpy as np
from scipy.io import savemat

from snella_seg.datasets.demo_data import make_ade20k_like
from snella_seg.datasets.pascal_context import LABELS_459

# URL path of each archive on its publisher's server (what --mirror keeps).
ADE_PATH = '/places/ADEchallenge/ADEChallengeData2016.zip'
VOC_PATH = '/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar'
CONTEXT_PATH = '/~roozbeh/pascal-context/trainval.tar.gz'
KVASIR_PATH = '/downloads/kvasir-seg.zip'
PASCAL_TRAIN, PASCAL_VAL = ['2008_000002', '2008_000003', '2008_000007'], ['2008_000008', '2008_000009']
UNLABELLED_VOC_IMAGE = '2008_000010'  # in VOC2010's Main lists, without a PASCAL-Context label map


def _zip(files: Dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def _tar(files: Dict[str, bytes], mode: str = 'w') -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as bundle:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode('.jpg', image)[1].tobytes()


def ade20k_zip(scratch: Path) -> bytes:
    """ADEChallengeData2016.zip: ``ADEChallengeData2016/{images,annotations}/{training,validation}``."""
    make_ade20k_like(str(scratch), num_train=4, num_val=2, size=64, seed=0)
    return _zip({str(path.relative_to(scratch)): path.read_bytes()
                 for path in sorted((scratch / 'ADEChallengeData2016').rglob('*')) if path.is_file()})


def voc2010_tar() -> bytes:
    """VOCtrainval_03-May-2010.tar: ``VOCdevkit/VOC2010/JPEGImages`` and ``ImageSets/Main/{train,val}.txt``."""
    rng = np.random.default_rng(0)
    names = PASCAL_TRAIN + PASCAL_VAL + [UNLABELLED_VOC_IMAGE]
    files = {f'VOCdevkit/VOC2010/JPEGImages/{name}.jpg': _jpeg(rng.integers(0, 255, (48, 64, 3), np.uint8))
             for name in names}
    files['VOCdevkit/VOC2010/ImageSets/Main/train.txt'] = '\n'.join(PASCAL_TRAIN + [UNLABELLED_VOC_IMAGE]).encode()
    files['VOCdevkit/VOC2010/ImageSets/Main/val.txt'] = '\n'.join(PASCAL_VAL).encode()
    return _tar(files)


def label_map_459(seed: int) -> np.ndarray:
    """A 48x64 PASCAL-Context LabelMap holding random values of the 459 classes (and 0)."""
    return np.random.default_rng(seed).integers(0, 460, (48, 64)).astype(np.uint16)


def mat_bytes(label_map: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    savemat(buffer, {'LabelMap': label_map})
    return buffer.getvalue()


def context_trainval_tar_gz(labels: Sequence[str] = LABELS_459) -> bytes:
    """PASCAL-Context's trainval.tar.gz: ``labels.txt`` ("1: accordion" ...) and ``trainval/<image id>.mat``, each
    holding a 459-class ``LabelMap``."""
    files = {f'trainval/{name}.mat': mat_bytes(label_map_459(seed))
             for seed, name in enumerate(PASCAL_TRAIN + PASCAL_VAL)}
    files['labels.txt'] = ''.join(f'{index}: {name}\n' for index, name in enumerate(labels, start=1)).encode()
    return _tar(files, mode='w:gz')


def kvasir_zip(count: int = 10) -> bytes:
    """kvasir-seg.zip: ``Kvasir-SEG/images/<id>.jpg`` and ``Kvasir-SEG/masks/<id>.jpg`` (white polyp on black)."""
    rng = np.random.default_rng(0)
    files = {}
    for index in range(count):
        name = f'cju{index:04d}'
        mask = np.zeros((48, 64, 3), np.uint8)
        cv2.circle(mask, (32, 24), 10, (255, 255, 255), -1)
        files[f'Kvasir-SEG/images/{name}.jpg'] = _jpeg(rng.integers(0, 255, (48, 64, 3), np.uint8))
        files[f'Kvasir-SEG/masks/{name}.jpg'] = _jpeg(mask)
    return _zip(files)
