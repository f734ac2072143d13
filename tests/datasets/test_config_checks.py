"""Checks of a whole config before training: every label map, and crops that match the data preprocessor."""
import os
import os.path as osp

import cv2
import numpy as np
import pytest
from mmengine.config import Config

import snella_seg  # noqa: F401  (registers the datasets the checks look up)
from snella_seg.datasets.config_checks import check_crop_matches_preprocessor, check_dataset_config
from snella_seg.datasets.demo_data import make_ade20k_like
from snella_seg.datasets.validation import DatasetError

from tests.helpers.log_capture import log_from_here
from tests.helpers.paths import REPO

CUSTOM_CONFIG = osp.join(REPO, 'configs', 'custom', 'snella_vit-b_my-dataset.py')
CAMVID = '/work/shared/data/camvid'


def test_a_bad_label_in_any_of_many_files_is_named(tmp_path):
    data_root = make_ade20k_like(str(tmp_path / 'ade'), num_train=30, num_val=1, size=16)
    label_dir = osp.join(data_root, 'annotations', 'training')
    unsampled = osp.join(label_dir, sorted(os.listdir(label_dir))[1])  # not among 20 spread over 30
    cv2.imwrite(unsampled, np.full((16, 16), 200, np.uint8))
    dataset = dict(type='ADE20KDataset', data_root=data_root,
                   data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'))
    with pytest.raises(DatasetError, match=f'train_dataloader.dataset: annotation {unsampled!r} has label values 200'):
        check_dataset_config(dataset, 150, 'train_dataloader.dataset', cache_dir=str(tmp_path / 'cache'))


def crop_config(crop_size, preprocessor_size):
    return Config(dict(
        model=dict(data_preprocessor=dict(size=preprocessor_size)),
        train_dataloader=dict(dataset=dict(pipeline=[dict(type='RandomCrop', crop_size=crop_size)]))))


def test_a_crop_smaller_than_the_preprocessor_size_is_refused_with_the_fix():
    with pytest.raises(ValueError) as error:
        check_crop_matches_preprocessor(crop_config((256, 256), (512, 512)))
    message = str(error.value)
    assert 'crops (256, 256) (RandomCrop crop_size) but model.data_preprocessor.size is (512, 512)' in message
    assert 'model = dict(data_preprocessor=dict(size=crop_size))' in message


def test_a_crop_equal_to_the_preprocessor_size_passes():
    check_crop_matches_preprocessor(crop_config([256, 320], (256, 320)))


def test_the_custom_template_sends_its_crop_size_to_the_preprocessor_and_slide_inference(tmp_path):
    text = open(CUSTOM_CONFIG).read().replace('crop_size = (512, 512)', 'crop_size = (256, 320)')
    text = text.replace("'../_base_/", repr(osp.join(REPO, 'configs', '_base_', ''))[:-1])
    copy = tmp_path / 'my_config.py'
    copy.write_text(text)
    cfg = Config.fromfile(str(copy))
    assert cfg.model.data_preprocessor.size == (256, 320)
    assert cfg.model.test_cfg.crop_size == (256, 320)
    check_crop_matches_preprocessor(cfg)


@pytest.mark.skipif(not osp.isdir(CAMVID), reason='the CamVid copy is not on this machine')
def test_camvid_passes_the_custom_template_checks(tmp_path):
    cfg = Config.fromfile(CUSTOM_CONFIG)
    dataset = dict(cfg.train_dataloader.dataset, data_root=CAMVID,
                   data_prefix=dict(img_path='images/val', seg_map_path='annotations/val'))
    assert check_dataset_config(dataset, 11, 'train_dataloader.dataset', cache_dir=str(tmp_path)) == 101


@pytest.mark.skipif(not osp.isdir(CAMVID), reason='the CamVid copy is not on this machine')
def test_camvid_read_with_reduce_zero_label_warns_in_the_log(tmp_path, capsys):
    cfg = Config.fromfile(CUSTOM_CONFIG)
    dataset = dict(cfg.train_dataloader.dataset, data_root=CAMVID, reduce_zero_label=True,
                   data_prefix=dict(img_path='images/val', seg_map_path='annotations/val'))
    log = log_from_here(capsys)
    check_dataset_config(dataset, 11, 'train_dataloader.dataset', cache_dir=str(tmp_path))
    assert 'train_dataloader.dataset: reduce_zero_label=True, but the label maps look 0-based' in log()
