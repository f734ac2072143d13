"""PresentClassIoUMetric: mmseg's numbers, and a per-class table of the classes the data holds."""
import logging

import pytest
import torch
from mmengine.logging import MMLogger
from mmseg.evaluation import IoUMetric

from snella_seg.evaluation import PresentClassIoUMetric

CLASSES = tuple(f'class{index}' for index in range(150))


def data_samples(seed=0):
    """Ground truth in classes 0-5 (and ignored pixels), predictions in 0-6: class 6 is only predicted."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(3):
        truth = torch.randint(0, 6, (1, 16, 16), generator=generator)
        truth[0, :2] = 255
        prediction = torch.randint(0, 7, (1, 16, 16), generator=generator)
        samples.append(dict(pred_sem_seg=dict(data=prediction), gt_sem_seg=dict(data=truth)))
    return samples


def evaluate(metric_class, **kwargs):
    metric = metric_class(iou_metrics=['mIoU', 'mDice', 'mFscore'], **kwargs)
    metric.dataset_meta = dict(classes=CLASSES)
    metric.process({}, data_samples())
    return metric.evaluate(3)


@pytest.fixture
def logged_lines():
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


@pytest.mark.parametrize('nan_to_num', [None, -1])
def test_metrics_equal_mmseg_iou_metric(nan_to_num):
    assert evaluate(PresentClassIoUMetric, nan_to_num=nan_to_num) == evaluate(IoUMetric, nan_to_num=nan_to_num)


def test_table_lists_only_classes_in_ground_truth_or_prediction(logged_lines):
    evaluate(PresentClassIoUMetric)
    header, table = logged_lines[-2:]
    assert header.startswith('per class results (7 of 150 classes occur in the ground truth or the prediction')
    rows = [line for line in table.splitlines() if line.startswith('|')][1:]
    assert [row.split('|')[1].strip() for row in rows] == [f'class{index}' for index in range(7)]
    assert all(row.split('|')[2].strip() != 'nan' for row in rows)  # IoU; class6's recall is nan: no ground truth


def test_mmseg_table_has_a_row_per_class(logged_lines):
    evaluate(IoUMetric)
    assert len([line for line in logged_lines[-1].splitlines() if line.startswith('|')]) == 151
