"""check_segmentation_folder: generated data passes, and each bad input gives its own specific error."""
import os
import os.path as osp
import re

import cv2
import numpy as np
import pytest

from snella_seg.datasets.demo_data import make_ade20k_like, make_pascal_context_like
from snella_seg.datasets import validation
from snella_seg.datasets.validation import DatasetError, check_segmentation_folder

ADE_CLASSES = 150


@pytest.fixture
def ade(tmp_path):
    """(image dir, annotation dir) of a small generated ADE20K-style training split."""
    data_root = make_ade20k_like(str(tmp_path), num_train=6, num_val=2, size=48)
    return osp.join(data_root, 'images', 'training'), osp.join(data_root, 'annotations', 'training')


def check_ade(img_dir, ann_dir, **kwargs):
    kwargs.setdefault('reduce_zero_label', True)
    return check_segmentation_folder(img_dir, ann_dir, ADE_CLASSES, **kwargs)


def first_file(folder):
    return osp.join(folder, sorted(os.listdir(folder))[0])


def cut_bytes(path, num_bytes):
    with open(path, 'rb') as stream:
        content = stream.read()
    with open(path, 'wb') as stream:
        stream.write(content[:-num_bytes])


def test_generated_ade20k_and_pascal_context_data_pass(tmp_path, ade):
    assert check_ade(*ade) == 6
    voc = make_pascal_context_like(str(tmp_path / 'pascal'), num_train=5, num_val=3, size=48)
    for split, count in (('train', 5), ('val', 3)):
        assert check_segmentation_folder(
            osp.join(voc, 'JPEGImages'), osp.join(voc, 'SegmentationClassContext'), 59, reduce_zero_label=True,
            split_file=osp.join(voc, 'ImageSets', 'SegmentationContext', split + '.txt')) == count


@pytest.mark.parametrize('which, kind', [(0, 'image'), (1, 'annotation')])
def test_missing_directory_names_the_path_and_the_fix(ade, which, kind):
    folders = list(ade)
    folders[which] += '_missing'
    with pytest.raises(DatasetError) as error:
        check_ade(*folders)
    message = str(error.value)
    assert f'{kind} directory {folders[which]!r} does not exist' in message
    assert 'data_prefix' in message and 'tools/make_demo_data.py' in message


def test_empty_dataset_reports_the_suffixes_found(ade):
    with pytest.raises(DatasetError, match=r"no images ending in '\.png' found in .*'\.jpg': 6.*img_suffix"):
        check_ade(*ade, img_suffix='.png')


def test_image_without_annotation_and_annotation_without_image_are_listed(ade):
    img_dir, ann_dir = ade
    os.remove(osp.join(ann_dir, 'ADE_train_00000002.png'))
    os.rename(osp.join(img_dir, 'ADE_train_00000005.jpg'), osp.join(img_dir, 'ADE_train_00000099.jpg'))
    with pytest.raises(DatasetError) as error:
        check_ade(img_dir, ann_dir)
    message = str(error.value)
    assert '6 images (.jpg)' in message and '5 annotations (.png)' in message
    assert "Images without annotation: 'ADE_train_00000002', 'ADE_train_00000099'." in message
    assert "Annotations without image: 'ADE_train_00000005'." in message


def test_long_mismatch_lists_only_five_names(ade):
    img_dir, ann_dir = ade
    for index in range(10, 18):
        cv2.imwrite(osp.join(img_dir, f'extra_{index}.jpg'), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"'extra_14' and 3 more\."):
        check_ade(img_dir, ann_dir)


def test_split_file_names_missing_files(ade, tmp_path):
    img_dir, ann_dir = ade
    split_file = tmp_path / 'train.txt'
    split_file.write_text('ADE_train_00000001\n\nADE_train_00000404\n')
    with pytest.raises(DatasetError, match=r"of the 2 names in split file .*1 have no image .*'ADE_train_00000404'; "
                                           r"1 have no annotation .*'ADE_train_00000404'"):
        check_ade(img_dir, ann_dir, split_file=str(split_file))
    split_file.write_text('ADE_train_00000001\nADE_train_00000003\n')
    assert check_ade(img_dir, ann_dir, split_file=str(split_file)) == 2


def test_missing_or_empty_split_file(ade, tmp_path):
    with pytest.raises(DatasetError, match='split file .* does not exist.*ann_file'):
        check_ade(*ade, split_file=str(tmp_path / 'nope.txt'))
    (tmp_path / 'empty.txt').write_text('\n')
    with pytest.raises(DatasetError, match='lists no names'):
        check_ade(*ade, split_file=str(tmp_path / 'empty.txt'))


@pytest.mark.parametrize('which, kind, format_name', [(0, 'image', 'JPEG'), (1, 'annotation', 'PNG')])
def test_truncated_files_are_named(ade, which, kind, format_name):
    path = first_file(ade[which])
    cut_bytes(path, 40)
    with pytest.raises(DatasetError, match=f'{kind} {re.escape(repr(path))} is truncated: the {format_name} file'):
        check_ade(*ade, max_image_decodes=0, check_label_values=False)  # found before anything is decoded


def test_empty_file_is_named(ade):
    path = first_file(ade[1])
    open(path, 'wb').close()
    with pytest.raises(DatasetError, match=f'annotation {re.escape(repr(path))} is empty'):
        check_ade(*ade)


def test_undecodable_image(ade):
    path = first_file(ade[0])
    with open(path, 'wb') as stream:
        stream.write(b'this is not a picture')
    with pytest.raises(DatasetError, match=f'image {re.escape(repr(path))} cannot be decoded by OpenCV'):
        check_ade(*ade)


def test_undecodable_annotation(ade):
    path = first_file(ade[1])
    with open(path, 'wb') as stream:
        stream.write(b'garbage')
    with pytest.raises(DatasetError, match=f'annotation {re.escape(repr(path))} cannot be decoded'):
        check_ade(*ade)


def write_split(ade, names):
    split_file = osp.join(osp.dirname(ade[0]), 'split.txt')
    with open(split_file, 'w') as stream:
        stream.write('\n'.join(names))
    return split_file


def write_labels(path, labels):
    assert cv2.imwrite(path, labels)


def test_label_values_out_of_range_name_file_values_and_range(ade):
    path = first_file(ade[1])
    labels = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    labels[:2, :2], labels[-1, -1] = 200, 151
    write_labels(path, labels)
    with pytest.raises(DatasetError) as error:
        check_ade(*ade)
    message = str(error.value)
    assert f'annotation {path!r} has label values 151, 200 outside the valid range' in message
    assert '0 (unlabelled, ignored) and 1..150 (classes; reduce_zero_label=True) or 255 (ignored)' in message
    assert 'num_classes (150)' in message


def test_255_is_ignored_with_and_without_reduce_zero_label(ade):
    path = first_file(ade[1])
    labels = np.full((48, 48), 255, np.uint8)
    labels[0, :3] = (0, 1, 150)
    write_labels(path, labels)
    assert check_ade(*ade, split_file=write_split(ade, [osp.basename(path)[:-4]])) == 1
    labels[0, :3] = (0, 1, 149)
    write_labels(path, labels)
    assert check_ade(*ade, split_file=write_split(ade, [osp.basename(path)[:-4]]), reduce_zero_label=False) == 1


def test_one_extra_label_value_names_both_readings_and_how_to_tell_them_apart(ade):
    with pytest.raises(DatasetError) as error:
        check_segmentation_folder(*ade, num_classes=143, reduce_zero_label=False, class_names=['wall'] * 143)
    message = str(error.value)
    assert 'label values 143 outside the valid range: 0..142 (classes) or 255 (ignore_index)' in message
    assert 'rewrite 143 as 255 (ignore_index) in the label files' in message
    assert 'set reduce_zero_label=True' in message
    assert "if 0 is your first class ('wall' in your class list) it is (1)" in message
    assert re.search(r'0 covers \d+\.\d% of the pixels and 143 covers \d+\.\d%', message)


def test_other_ignore_index_without_reduce_zero_label(ade):
    path = first_file(ade[1])
    write_labels(path, np.full((48, 48), 7, np.uint8))
    split_file = write_split(ade, [osp.basename(path)[:-4]])
    assert check_segmentation_folder(*ade, num_classes=3, ignore_index=7, split_file=split_file) == 1
    with pytest.raises(DatasetError, match=r'values 7 outside the valid range: 0\.\.2 \(classes\) or 255'):
        check_segmentation_folder(*ade, num_classes=3, split_file=split_file)


def test_colour_annotation_is_rejected(ade):
    path = first_file(ade[1])
    write_labels(path, np.zeros((48, 48, 3), np.uint8))
    with pytest.raises(DatasetError, match=r'has shape \(48, 48, 3\); it must be a single-channel label map'):
        check_ade(*ade)


def test_palette_annotation_is_read_as_class_indices(ade):
    from PIL import Image

    path = first_file(ade[1])
    palette_image = Image.fromarray(np.full((48, 48), 4, np.uint8), mode='L').convert('P')
    palette_image.putpalette([value for index in range(256) for value in (index * 3 % 256, 200, 17)])
    palette_image.save(path)
    assert check_ade(*ade) == 6


def test_size_mismatch_names_both_files(ade):
    path = first_file(ade[1])
    write_labels(path, np.ones((40, 48), np.uint8))
    with pytest.raises(DatasetError, match=r"is 48x48 but its annotation .* is 48x40 \(width x height\)"):
        check_ade(*ade)


def test_every_annotation_with_bad_values_is_named(ade):
    ann_dir = ade[1]
    names = sorted(os.listdir(ann_dir))
    for name in (names[1], names[4]):
        write_labels(osp.join(ann_dir, name), np.full((48, 48), 200, np.uint8))
    with pytest.raises(DatasetError) as error:
        check_ade(*ade)
    message = str(error.value)
    assert '2 of 6 annotations have such values (200 in 2)' in message
    assert names[1] in message and names[4] in message


def test_max_image_decodes_limits_image_decoding_but_not_label_or_size_checks(ade):
    img_dir, ann_dir = ade
    names = sorted(os.listdir(ann_dir))
    write_labels(osp.join(ann_dir, names[2]), np.full((48, 48), 200, np.uint8))
    with pytest.raises(DatasetError, match='label values 200'):
        check_ade(img_dir, ann_dir, max_image_decodes=0)
    write_labels(osp.join(ann_dir, names[2]), np.ones((40, 48), np.uint8))
    with pytest.raises(DatasetError, match='is 48x48 but its annotation'):
        check_ade(img_dir, ann_dir, max_image_decodes=0)


def count_label_decodes(monkeypatch):
    decoded = []
    read = validation._label_histogram
    monkeypatch.setattr(validation, '_label_histogram', lambda path: decoded.append(path) or read(path))
    return decoded


def test_a_second_check_of_unchanged_data_decodes_nothing(ade, tmp_path, monkeypatch):
    decoded = count_label_decodes(monkeypatch)
    assert check_ade(*ade, cache_dir=str(tmp_path / 'cache')) == 6
    assert len(decoded) == 6
    assert check_ade(*ade, cache_dir=str(tmp_path / 'cache')) == 6
    assert len(decoded) == 6


def test_a_long_scan_reports_progress_and_a_summary(ade, tmp_path, monkeypatch):
    monkeypatch.setattr(validation, 'PROGRESS_INTERVAL_S', 0.0)
    reports = []
    check_ade(*ade, cache_dir=str(tmp_path / 'cache'), progress=reports.append)
    assert reports[0].endswith(': 1/6 files (0 s)')
    assert 'decoded 6 of 6 files in' in reports[-1] and str(tmp_path / 'cache') in reports[-1]


def test_a_changed_annotation_is_read_again_despite_the_cache(ade, tmp_path):
    check_ade(*ade, cache_dir=str(tmp_path / 'cache'))
    path = first_file(ade[1])
    write_labels(path, np.full((48, 48), 200, np.uint8))
    with pytest.raises(DatasetError, match=f'annotation {re.escape(repr(path))} has label values 200'):
        check_ade(*ade, cache_dir=str(tmp_path / 'cache'))


def test_an_unreadable_cache_is_rebuilt(ade, tmp_path, monkeypatch):
    check_ade(*ade, cache_dir=str(tmp_path / 'cache'))
    for cache_file in (tmp_path / 'cache').iterdir():
        cache_file.write_text('{not json')
    decoded = count_label_decodes(monkeypatch)
    assert check_ade(*ade, cache_dir=str(tmp_path / 'cache')) == 6
    assert len(decoded) == 6
    assert check_ade(*ade, cache_dir=str(tmp_path / 'cache')) == 6
    assert len(decoded) == 6


def test_bad_arguments(ade):
    with pytest.raises(ValueError, match='num_classes must be at least 1'):
        check_segmentation_folder(*ade, num_classes=0)
    with pytest.raises(ValueError, match='max_image_decodes'):
        check_ade(*ade, max_image_decodes=-1)


def test_a_truncated_annotation_and_an_out_of_range_label_are_reported_in_one_run(ade):
    ann_dir = ade[1]
    names = sorted(os.listdir(ann_dir))
    truncated, out_of_range = osp.join(ann_dir, names[0]), osp.join(ann_dir, names[3])
    cut_bytes(truncated, 40)
    write_labels(out_of_range, np.full((48, 48), 200, np.uint8))
    with pytest.raises(DatasetError) as error:
        check_ade(*ade)
    message = str(error.value)
    assert message.startswith('2 problems in the data, all listed here:')
    assert f'annotation {truncated!r} is truncated' in message
    assert f'annotation {out_of_range!r} has label values 200' in message


def test_a_long_report_is_capped_and_counts_every_problem(ade, monkeypatch):
    monkeypatch.setattr(validation, 'MAX_PROBLEMS_REPORTED', 2)
    img_dir = ade[0]
    for name in sorted(os.listdir(img_dir))[:3]:
        with open(osp.join(img_dir, name), 'wb') as stream:
            stream.write(b'this is not a picture')
    with pytest.raises(DatasetError) as error:
        check_ade(*ade)
    message = str(error.value)
    assert message.startswith('3 problems in the data, all listed here but the last 1:')
    assert message.count('cannot be decoded by OpenCV') == 2


def camvid_like(tmp_path, num_classes=11, num_maps=4):
    """0-based label maps (0 = sky, a class; void 255) holding every class, with their images."""
    img_dir, ann_dir = tmp_path / 'img', tmp_path / 'ann'
    img_dir.mkdir()
    ann_dir.mkdir()
    for index in range(num_maps):
        labels = np.resize(np.arange(num_classes, dtype=np.uint8), (24, 24))
        labels[:8] = 0  # the sky fills the top of every picture
        labels[-1, -1] = 255
        write_labels(str(ann_dir / f'{index}.png'), labels)
        assert cv2.imwrite(str(img_dir / f'{index}.jpg'), np.zeros((24, 24, 3), np.uint8))
    return str(img_dir), str(ann_dir)


def test_reduce_zero_label_on_zero_based_maps_warns_with_the_setting_and_the_fix(tmp_path):
    warned = []
    check_segmentation_folder(*camvid_like(tmp_path), 11, reduce_zero_label=True, warn=warned.append,
                              class_names=['sky'] + [f'class{i}' for i in range(1, 11)])
    assert len(warned) == 1
    assert 'reduce_zero_label=True, but the label maps look 0-based: value 0 occurs in 4 of 4 maps' in warned[0]
    assert "last class ('class10') never occurs" in warned[0]
    assert "If 0 is your first class ('sky')" in warned[0] and 'set reduce_zero_label=False' in warned[0]


def test_zero_based_maps_read_as_such_and_one_based_data_do_not_warn(tmp_path, ade):
    warned = []
    check_segmentation_folder(*camvid_like(tmp_path), 11, reduce_zero_label=False, warn=warned.append)
    check_ade(*ade, warn=warned.append)  # 0 unlabelled, most classes absent: nothing suggests a 0-based map
    assert warned == []
