"""Demo data generator: layouts, determinism, label ranges, learnable colours, CLI, and loading through mmseg."""
import os
import os.path as osp
import runpy
import sys

import cv2
import numpy as np
import pytest

from snella_seg.datasets.demo_data import (ADE20K_CLASS_IDS, CUSTOM_IGNORE, DEMO_CLASSES, PASCAL_CONTEXT_CLASS_IDS,
                                           make_ade20k_like, make_custom_like, make_pascal_context_like)

from tests.helpers.paths import REPO


def list_files(folder):
    return sorted(os.listdir(folder))


def read_labels(paths):
    return [cv2.imread(path, cv2.IMREAD_UNCHANGED) for path in paths]


def test_ade20k_layout_and_counts(tmp_path):
    data_root = make_ade20k_like(str(tmp_path), num_train=5, num_val=3, size=64)
    assert data_root == osp.join(str(tmp_path), 'ADEChallengeData2016')
    for split, prefix, count in (('training', 'ADE_train', 5), ('validation', 'ADE_val', 3)):
        images = list_files(osp.join(data_root, 'images', split))
        labels = list_files(osp.join(data_root, 'annotations', split))
        assert images == [f'{prefix}_{index:08d}.jpg' for index in range(1, count + 1)]
        assert labels == [name.replace('.jpg', '.png') for name in images]
    image = cv2.imread(osp.join(data_root, 'images', 'training', 'ADE_train_00000001.jpg'))
    labels = cv2.imread(osp.join(data_root, 'annotations', 'training', 'ADE_train_00000001.png'), cv2.IMREAD_UNCHANGED)
    assert image.shape == (64, 64, 3) and labels.shape == (64, 64) and labels.dtype == np.uint8


def test_custom_layout_has_odd_sized_images_class_ids_from_zero_and_255_for_clutter(tmp_path):
    root = make_custom_like(str(tmp_path / 'my_dataset'), num_train=6, num_val=2, size=64, seed=1)
    shapes, values = set(), set()
    for split, count in (('train', 6), ('val', 2)):
        images = list_files(osp.join(root, 'img_dir', split))
        assert images == [f'{split}_{index:04d}.jpg' for index in range(1, count + 1)]
        assert list_files(osp.join(root, 'ann_dir', split)) == [name.replace('.jpg', '.png') for name in images]
        for name in images:
            image = cv2.imread(osp.join(root, 'img_dir', split, name))
            labels = cv2.imread(osp.join(root, 'ann_dir', split, name.replace('.jpg', '.png')), cv2.IMREAD_UNCHANGED)
            assert image.shape[:2] == labels.shape
            shapes.add(labels.shape)
            values.update(np.unique(labels).tolist())
    assert len(shapes) == 8 and all(h % 2 and w % 2 for h, w in shapes)
    assert values <= set(range(len(DEMO_CLASSES))) | {CUSTOM_IGNORE} and CUSTOM_IGNORE in values


def test_pascal_context_layout_and_split_files(tmp_path):
    data_root = make_pascal_context_like(str(tmp_path), num_train=4, num_val=2, size=64)
    assert data_root == osp.join(str(tmp_path), 'VOCdevkit', 'VOC2010')
    split_dir = osp.join(data_root, 'ImageSets', 'SegmentationContext')
    with open(osp.join(split_dir, 'train.txt')) as train, open(osp.join(split_dir, 'val.txt')) as val:
        train_ids, val_ids = train.read().split(), val.read().split()
    assert train_ids == ['2008_000001', '2008_000002', '2008_000003', '2008_000004']
    assert val_ids == ['2008_000005', '2008_000006']
    all_ids = train_ids + val_ids
    assert list_files(osp.join(data_root, 'JPEGImages')) == [name + '.jpg' for name in all_ids]
    assert list_files(osp.join(data_root, 'SegmentationClassContext')) == [name + '.png' for name in all_ids]


@pytest.mark.parametrize('make', [make_ade20k_like, make_pascal_context_like])
def test_same_seed_gives_same_files_and_other_seed_differs(tmp_path, make):
    def file_bytes(data_root):
        contents = {}
        for parent, _, files in os.walk(data_root):
            for name in files:
                with open(osp.join(parent, name), 'rb') as stream:
                    contents[osp.relpath(osp.join(parent, name), data_root)] = stream.read()
        return contents

    first = file_bytes(make(str(tmp_path / 'a'), num_train=3, num_val=2, size=48, seed=7))
    again = file_bytes(make(str(tmp_path / 'b'), num_train=3, num_val=2, size=48, seed=7))
    other = file_bytes(make(str(tmp_path / 'c'), num_train=3, num_val=2, size=48, seed=8))
    assert first == again
    assert first.keys() == other.keys() and first != other


@pytest.mark.parametrize('make, class_ids, label_dir', [
    (make_ade20k_like, ADE20K_CLASS_IDS, 'annotations/training'),
    (make_pascal_context_like, PASCAL_CONTEXT_CLASS_IDS, 'SegmentationClassContext')])
def test_labels_are_the_demo_class_ids_and_unlabelled(tmp_path, make, class_ids, label_dir):
    data_root = make(str(tmp_path), num_train=20, num_val=0, size=64)
    folder = osp.join(data_root, label_dir)
    label_maps = read_labels([osp.join(folder, name) for name in list_files(folder)])
    assert set(np.unique(np.stack(label_maps)).tolist()) == {0} | set(class_ids.values())
    assert all(len(np.unique(labels)) >= 3 for labels in label_maps)  # background plus at least one object


def test_train_and_val_share_classes_and_class_colours_separate_pixels(tmp_path):
    """A nearest-mean-colour pixel classifier fit on train beats chance by far on val: the data is learnable."""
    data_root = make_ade20k_like(str(tmp_path), num_train=20, num_val=8, size=64)

    def pixels(split):
        folder = osp.join(data_root, 'images', split)
        names = list_files(folder)
        images = np.stack([cv2.imread(osp.join(folder, name)) for name in names]).reshape(-1, 3).astype(np.float32)
        label_folder = osp.join(data_root, 'annotations', split)
        labels = np.stack(read_labels([osp.join(label_folder, name[:-4] + '.png') for name in names])).reshape(-1)
        return images[labels > 0], labels[labels > 0]

    train_pixels, train_labels = pixels('training')
    val_pixels, val_labels = pixels('validation')
    assert set(np.unique(val_labels)) == set(np.unique(train_labels)) == set(ADE20K_CLASS_IDS.values())
    class_values = np.unique(train_labels)
    means = np.stack([train_pixels[train_labels == value].mean(0) for value in class_values])
    predicted = class_values[np.argmin(((val_pixels[:, None] - means[None]) ** 2).sum(-1), axis=1)]
    per_class_recall = [np.mean(predicted[val_labels == value] == value) for value in class_values]
    assert np.mean(per_class_recall) > 0.6 > 1 / len(DEMO_CLASSES)


def test_regenerating_replaces_previous_demo_data(tmp_path):
    make_ade20k_like(str(tmp_path), num_train=6, num_val=2, size=32)
    data_root = make_ade20k_like(str(tmp_path), num_train=3, num_val=1, size=32)
    assert len(list_files(osp.join(data_root, 'images', 'training'))) == 3
    assert len(list_files(osp.join(data_root, 'annotations', 'validation'))) == 1


def test_refuses_to_overwrite_a_folder_it_did_not_write(tmp_path):
    real_data = tmp_path / 'ADEChallengeData2016' / 'images'
    real_data.mkdir(parents=True)
    with pytest.raises(FileExistsError, match='not generated by make_demo_data'):
        make_ade20k_like(str(tmp_path))
    assert real_data.is_dir()


def test_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match='size >= 16'):
        make_pascal_context_like(str(tmp_path), size=8)


def test_cli_writes_the_layout_and_prints_the_data_root(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / 'demo')
    monkeypatch.setattr(sys, 'argv', ['make_demo_data.py', '--layout', 'pascal-context', '--out', out,
                                      '--num-train', '2', '--num-val', '1', '--size', '32', '--seed', '3'])
    runpy.run_path(osp.join(REPO, 'tools', 'make_demo_data.py'), run_name='__main__')
    data_root = osp.join(out, 'VOCdevkit', 'VOC2010')
    assert capsys.readouterr().out.strip() == data_root
    assert len(list_files(osp.join(data_root, 'JPEGImages'))) == 3


@pytest.mark.filterwarnings('ignore:.reduce_zero_label. will be deprecated')  # the standard config pipeline
@pytest.mark.parametrize('layout', ['ade20k', 'pascal-context'])
def test_mmseg_datasets_load_the_demo_data(tmp_path, layout):
    import snella_seg  # noqa: F401  (installs the mmcv ops stand-in before mmseg is imported)
    from mmengine.registry import DefaultScope
    from mmseg.datasets import ADE20KDataset, PascalContextDataset59

    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
                dict(type='PackSegInputs')]
    with DefaultScope.overwrite_default_scope('mmseg'):  # resolves the transform names as mmseg configs do
        if layout == 'ade20k':
            data_root = make_ade20k_like(str(tmp_path), num_train=4, num_val=3, size=64)
            dataset = ADE20KDataset(data_root=data_root, pipeline=pipeline, data_prefix=dict(
                img_path='images/validation', seg_map_path='annotations/validation'))
            class_ids = ADE20K_CLASS_IDS
        else:
            data_root = make_pascal_context_like(str(tmp_path), num_train=4, num_val=3, size=64)
            dataset = PascalContextDataset59(data_root=data_root, pipeline=pipeline, data_prefix=dict(
                img_path='JPEGImages', seg_map_path='SegmentationClassContext'),
                ann_file='ImageSets/SegmentationContext/val.txt')
            class_ids = PASCAL_CONTEXT_CLASS_IDS
    assert len(dataset) == 3
    num_classes = len(dataset.metainfo['classes'])
    seen = set()
    for index in range(len(dataset)):
        sample = dataset[index]
        assert tuple(sample['inputs'].shape) == (3, 64, 64)
        labels = sample['data_samples'].gt_sem_seg.data.numpy()
        assert ((labels < num_classes) | (labels == 255)).all()
        seen |= set(np.unique(labels).tolist())
    assert seen <= {value - 1 for value in class_ids.values()} | {255}
    assert 255 in seen and len(seen) >= 4
