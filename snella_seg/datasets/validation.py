"""Check a segmentation data folder before training, with errors that say what is wrong, where, and how to fix it.

mmseg itself fails late and vaguely on bad data (an assertion deep in a transform, an IndexError in the loss, or
silently wrong mIoU from out-of-range labels); these checks fail early with the offending path and a fix.
Images are decoded with OpenCV and annotations with Pillow, as mmseg's LoadImageFromFile and LoadAnnotations do
(Pillow keeps the class indices of palette PNGs, which OpenCV would turn into colours).
"""
import os
import os.path as osp
from collections import Counter
from typing import List, Optional, Sequence

import cv2
import numpy as np
from PIL import Image

MAX_LISTED = 5
# How far from the end of a file its end marker may sit (some writers pad JPEGs after the EOI marker).
END_MARKER_WINDOW = 512
JPEG_SIGNATURE, JPEG_END = b'\xff\xd8', b'\xff\xd9'
PNG_SIGNATURE, PNG_END = b'\x89PNG\r\n\x1a\n', b'IEND\xaeB`\x82'
LAYOUT_HINT = ('Check data_root and data_prefix=dict(img_path=..., seg_map_path=...) in the dataset config, or '
               'generate demo data with `python tools/make_demo_data.py --layout ade20k --out data/demo`.')


class DatasetError(ValueError):
    """A problem with the data on disk; the message names the path and how to fix it."""


def _listed(names: Sequence[str]) -> str:
    shown = ', '.join(repr(name) for name in names[:MAX_LISTED])
    return shown + (f' and {len(names) - MAX_LISTED} more' if len(names) > MAX_LISTED else '')


def _names_in(folder: str, suffix: str) -> List[str]:
    """Relative paths without ``suffix`` of all files under ``folder`` ending in it, as mmseg lists them."""
    names = []
    for parent, _, files in os.walk(folder):
        for file_name in files:
            if file_name.endswith(suffix):
                names.append(osp.relpath(osp.join(parent, file_name), folder)[:-len(suffix)])
    return sorted(names)


def _require_dir(folder: str, kind: str) -> None:
    if not osp.isdir(folder):
        raise DatasetError(f'{kind} directory {folder!r} does not exist. {LAYOUT_HINT}')


def _suffix_summary(folder: str) -> str:
    counts = Counter(osp.splitext(name)[1] or '(none)' for _, _, files in os.walk(folder) for name in files)
    if not counts:
        return 'The directory is empty.'
    return 'Files there by suffix: ' + ', '.join(f'{suffix!r}: {count}' for suffix, count in counts.most_common()) + '.'


def _read_names(split_file: str) -> List[str]:
    if not osp.isfile(split_file):
        raise DatasetError(f'split file {split_file!r} does not exist. Check ann_file in the dataset config (it is '
                           'relative to data_root), or drop it to use every image in the image directory.')
    with open(split_file, encoding='utf-8') as lines:
        return [line.strip() for line in lines if line.strip()]


def _check_pairs_exist(names: List[str], img_dir: str, ann_dir: str, img_suffix: str, seg_suffix: str,
                       split_file: str) -> None:
    missing_images = [name for name in names if not osp.isfile(osp.join(img_dir, name + img_suffix))]
    missing_labels = [name for name in names if not osp.isfile(osp.join(ann_dir, name + seg_suffix))]
    problems = []
    if missing_images:
        problems.append(f'{len(missing_images)} have no image {img_dir}/<name>{img_suffix}: {_listed(missing_images)}')
    if missing_labels:
        problems.append(f'{len(missing_labels)} have no annotation {ann_dir}/<name>{seg_suffix}: '
                        f'{_listed(missing_labels)}')
    if problems:
        raise DatasetError(f'of the {len(names)} names in split file {split_file!r}, ' + '; '.join(problems) +
                           '. Check that the split file belongs to these folders and that img_suffix/seg_map_suffix '
                           'match the files.')


def _check_folders_match(image_names: List[str], label_names: List[str], img_dir: str, ann_dir: str,
                         img_suffix: str, seg_suffix: str) -> None:
    images_without_label = sorted(set(image_names) - set(label_names))
    labels_without_image = sorted(set(label_names) - set(image_names))
    if not images_without_label and not labels_without_image:
        return
    message = (f'image and annotation folders do not match: {len(image_names)} images ({img_suffix}) in '
               f'{img_dir!r}, {len(label_names)} annotations ({seg_suffix}) in {ann_dir!r}.')
    if images_without_label:
        message += f' Images without annotation: {_listed(images_without_label)}.'
    if labels_without_image:
        message += f' Annotations without image: {_listed(labels_without_image)}.'
    raise DatasetError(message + ' Both folders must hold the same file names (up to the suffix): check that they '
                       'are from the same split and that img_suffix/seg_map_suffix are right.')


def _check_complete(path: str, kind: str) -> None:
    """Reject empty files and JPEG/PNG files cut short (decoders often return a partly grey image silently)."""
    size = osp.getsize(path)
    if size == 0:
        raise DatasetError(f'{kind} {path!r} is empty (0 bytes); re-copy or re-download it.')
    with open(path, 'rb') as stream:
        head = stream.read(len(PNG_SIGNATURE))
        stream.seek(max(0, size - END_MARKER_WINDOW))
        tail = stream.read()
    for signature, end_marker, format_name in ((JPEG_SIGNATURE, JPEG_END, 'JPEG'), (PNG_SIGNATURE, PNG_END, 'PNG')):
        if head.startswith(signature) and end_marker not in tail:
            raise DatasetError(f'{kind} {path!r} is truncated: the {format_name} file ({size} bytes) lacks its end '
                               'marker, so it was cut short while copying or downloading. Re-copy or re-download it.')


def _read_image(path: str) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f'image {path!r} cannot be decoded by OpenCV: it is corrupt or not an image. '
                           'Replace it or remove it together with its annotation.')
    return image


def _read_label_map(path: str) -> np.ndarray:
    try:
        with Image.open(path) as label_image:
            labels = np.asarray(label_image)
    except (OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f'annotation {path!r} cannot be decoded ({error}): it is corrupt or not an image. '
                           'Replace it or remove it together with its image.') from error
    if labels.ndim != 2:
        raise DatasetError(f'annotation {path!r} has shape {labels.shape}; it must be a single-channel label map '
                           'whose pixels store class indices. If it is a colour-coded mask, convert each colour to '
                           'its class index (a grey or palette PNG) first.')
    return labels


def _valid_labels_text(num_classes: int, ignore_index: int, reduce_zero_label: bool) -> str:
    if reduce_zero_label:
        text = f'0 (unlabelled, ignored) and 1..{num_classes} (classes; reduce_zero_label=True)'
        return text + (' or 255 (ignored)' if ignore_index == 255 else '')
    return f'0..{num_classes - 1} (classes) or {ignore_index} (ignore_index)'


def _check_label_values(labels: np.ndarray, path: str, num_classes: int, ignore_index: int,
                        reduce_zero_label: bool) -> None:
    values = np.unique(labels)
    if reduce_zero_label:
        # LoadAnnotations maps stored v to v - 1 and 0 to 255, but keeps a stored 255 at 255.
        valid = (values <= num_classes) | ((values == 255) & (ignore_index == 255))
    else:
        valid = (values < num_classes) | (values == ignore_index)
    bad = values[~valid].tolist()
    if not bad:
        return
    message = (f'annotation {path!r} has label values {_listed(bad)} outside the valid range: '
               f'{_valid_labels_text(num_classes, ignore_index, reduce_zero_label)}.')
    if not reduce_zero_label and bad == [num_classes] and 0 in values:
        message += (' The labels look 1-based with 0 as "unlabelled": set reduce_zero_label=True in the dataset '
                    'and in LoadAnnotations.')
    else:
        message += (f' Check that num_classes ({num_classes}) matches the dataset\'s class list, or remap these '
                    f'values to {ignore_index} (ignored).')
    raise DatasetError(message)


def check_segmentation_folder(img_dir: str, ann_dir: str, num_classes: int, ignore_index: int = 255,
                              reduce_zero_label: bool = False, img_suffix: str = '.jpg', seg_suffix: str = '.png',
                              split_file: Optional[str] = None, max_label_checks: Optional[int] = None) -> int:
    """Check an image folder and its annotation folder; raise ``DatasetError`` on the first problem.

    Every sample is checked for both files being present and complete; ``max_label_checks`` samples (all when
    None), spread evenly over the data set, are also decoded and their label values and sizes checked. Names come
    from ``split_file`` (one per line, as mmseg's ``ann_file``) when given, else from the image folder.
    Returns the number of samples.
    """
    if num_classes < 1:
        raise ValueError(f'num_classes must be at least 1, got {num_classes}')
    if max_label_checks is not None and max_label_checks < 0:
        raise ValueError(f'max_label_checks must be None or at least 0, got {max_label_checks}')
    _require_dir(img_dir, 'image')
    _require_dir(ann_dir, 'annotation')
    if split_file is not None:
        names = _read_names(split_file)
        if not names:
            raise DatasetError(f'split file {split_file!r} lists no names; it should hold one image name (without '
                               'suffix) per line.')
        _check_pairs_exist(names, img_dir, ann_dir, img_suffix, seg_suffix, split_file)
    else:
        names = _names_in(img_dir, img_suffix)
        if not names:
            raise DatasetError(f'no images ending in {img_suffix!r} found in {img_dir!r}. {_suffix_summary(img_dir)} '
                               f'Set img_suffix to the images\' suffix, or point data_prefix.img_path at the folder '
                               'that holds them.')
        _check_folders_match(names, _names_in(ann_dir, seg_suffix), img_dir, ann_dir, img_suffix, seg_suffix)

    image_paths = [osp.join(img_dir, name + img_suffix) for name in names]
    label_paths = [osp.join(ann_dir, name + seg_suffix) for name in names]
    for image_path, label_path in zip(image_paths, label_paths):
        _check_complete(image_path, 'image')
        _check_complete(label_path, 'annotation')

    num_decoded = len(names) if max_label_checks is None else min(max_label_checks, len(names))
    for index in np.unique(np.linspace(0, len(names) - 1, num_decoded).round().astype(int)):
        image = _read_image(image_paths[index])
        labels = _read_label_map(label_paths[index])
        if image.shape[:2] != labels.shape:
            raise DatasetError(f'image {image_paths[index]!r} is {image.shape[1]}x{image.shape[0]} but its annotation '
                               f'{label_paths[index]!r} is {labels.shape[1]}x{labels.shape[0]} (width x height); '
                               'each label map must have its image\'s size.')
        _check_label_values(labels, label_paths[index], num_classes, ignore_index, reduce_zero_label)
    return len(names)
