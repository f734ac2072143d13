"""Each dataset family's configs pad to their crop, can run --tta and print only present classes."""
import os.path as osp

import pytest
from mmengine.config import Config

import snella_seg  # noqa: F401  (registers PresentClassIoUMetric and the Kvasir transforms)
from snella_seg.apis import test as run_test
from snella_seg.datasets.config_checks import check_crop_matches_preprocessor

from tests.helpers.paths import REPO

# One config per dataset base; every other shipped config inherits from one of these.
FAMILIES = ['configs/snella_vit-b_ade20k.py', 'configs/snella_vit-b_pascal-context-59.py',
            'configs/snella_sam-b_kvasir-seg.py', 'configs/custom/snella_vit-b_my-dataset.py',
            'configs/demo/snella_vit-tiny_demo-ade20k.py']


@pytest.fixture(scope='module', params=FAMILIES)
def cfg(request):
    return Config.fromfile(osp.join(REPO, request.param))


def test_training_crops_equal_the_preprocessor_size(cfg):
    crops = [t['crop_size'] for t in cfg.train_dataloader.dataset.pipeline if t['type'] == 'RandomCrop']
    assert [tuple(crop) for crop in crops] == [tuple(cfg.model.data_preprocessor.size)]
    check_crop_matches_preprocessor(cfg)


def test_tta_pipeline_and_model_are_there(cfg):
    assert cfg.tta_model.type == 'SegTTAModel'
    assert [t['type'] for t in cfg.tta_pipeline] == ['LoadImageFromFile', 'TestTimeAug']


def test_evaluators_print_only_present_classes(cfg):
    assert cfg.val_evaluator.type == cfg.test_evaluator.type == 'PresentClassIoUMetric'


def test_tta_without_a_tta_pipeline_names_the_fix(tmp_path):
    cfg = Config.fromfile(osp.join(REPO, FAMILIES[-1]))
    cfg = Config({key: value for key, value in cfg.items() if key != 'tta_pipeline'})
    checkpoint = tmp_path / 'iter_1.pth'
    checkpoint.write_bytes(b'')
    with pytest.raises(ValueError, match=r'--tta needs tta_pipeline in the config: add tta_model = .*SegTTAModel'):
        run_test(cfg, str(checkpoint), tta=True)
