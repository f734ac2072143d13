"""Check a segmentation data folder before training, with errors that say what is wrong, where, and how to fix it.

mmseg itself fails late and vaguely on bad data (an assertion deep in a transform, an IndexError in the loss, or
silently wrong mIoU from out-of-range labels); these checks fail early with the offending path and a fix.
Images are decoded with OpenCV and annotations with Pillow, as mmseg's LoadImageFromFile and LoadAnnotations do
(Pillow keeps the class indices of palette PNGs, which OpenCV would turn into colours).
"""
import hashlib
import json
import os
import os.path as osp
import time
import warnings
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

MAX_LISTED = 5
# reduce_zero_label=True looks mistaken when the maps are 0-based: value 0 in at least this share of the maps, and
# at least this share of the values 1..num_classes - 1 present while num_classes never is.
ZERO_BASED_MIN_MAPS_WITH_ZERO = 0.5
ZERO_BASED_MIN_VALUES_PRESENT = 0.9
# Problems with single files are collected over the whole data set; a report lists at most this many.
MAX_PROBLEMS_REPORTED = 20
# How far from the end of a file its end marker may sit (some writers pad JPEGs after the EOI marker).
END_MARKER_WINDOW = 512
# Scans remembered between runs are ignored when this changes.
SCAN_CACHE_VERSION = 1
# Scans shorter than this stay silent; longer ones report every PROGRESS_INTERVAL_S and once at the end.
PROGRESS_INTERVAL_S = 5.0
# EXIF orientations that swap width and height (OpenCV applies them when it decodes, so training sees them).
EXIF_ORIENTATION, TRANSPOSING_ORIENTATIONS = 0x0112, (5, 6, 7, 8)
JPEG_SIGNATURE, JPEG_END = b'\xff\xd8', b'\xff\xd9'
PNG_SIGNATURE, PNG_END = b'\x89PNG\r\n\x1a\n', b'IEND\xaeB`\x82'
LAYOUT_HINT = ('Check data_root and data_prefix=dict(img_path=..., seg_map_path=...) in the dataset config, or '
               'generate demo data with `python tools/make_demo_data.py --layout ade20k --out data/demo`.')


class DatasetError(ValueError):
    """A problem with the data on disk; the message names the path and how to fix it."""


class _Problems:
    """Problems with single files, collected so that one check reports them all."""

    def __init__(self) -> None:
        self.messages: List[str] = []
        self.bad_paths: set = set()

    def record(self, check: Callable[[], object], *paths: str):
        """Return what ``check`` returns; on a ``DatasetError``, remember its message and ``paths`` and return None."""
        try:
            return check()
        except DatasetError as error:
            self.messages.append(str(error))
            self.bad_paths.update(paths)
            return None

    def raise_if_any(self) -> None:
        if len(self.messages) == 1:
            raise DatasetError(self.messages[0])
        if self.messages:
            shown = self.messages[:MAX_PROBLEMS_REPORTED]
            more = len(self.messages) - len(shown)
            raise DatasetError(f'{len(self.messages)} problems in the data, all listed here'
                               + (f' but the last {more}' if more else '') + ':\n'
                               + '\n'.join(f'- {message}' for message in shown))


def _listed(names: Sequence[str]) -> str:
    shown = ', '.join(repr(name) for name in names[:MAX_LISTED])
    return shown + (f' and {len(names) - MAX_LISTED} more' if len(names) > MAX_LISTED else '')


def _names_in(folder: str, suffix: str) -> List[str]:
    """Return the relative paths without ``suffix`` of all files under ``folder`` ending in it, as mmseg lists them."""
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
    """Reject empty files and JPEG/PNG files cut short (decoders often return a partly grey image silently).

    Raises:
        DatasetError: the file is empty or truncated.
    """
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


def _read_image(path: str, kind: str = 'image') -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        other = 'annotation' if kind == 'image' else 'image'
        raise DatasetError(f'{kind} {path!r} cannot be decoded by OpenCV: it is corrupt or not an image. '
                           f'Replace it or remove it together with its {other}.')
    return image


def _decoded_shape(path: str, kind: str) -> Tuple[int, int]:
    """Return (height, width) as OpenCV decodes the file (EXIF orientation applied), read from the header alone."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError):  # a format Pillow cannot read: OpenCV decides, and names the file
        return _read_image(path, kind).shape[:2]
    return (width, height) if orientation in TRANSPOSING_ORIENTATIONS else (height, width)


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


def _label_histogram(path: str) -> Tuple[Tuple[int, int], List[int], List[int]]:
    """Return the shape, label values present and their pixel counts (bincount for 8/16-bit maps: a few ms a file)."""
    labels = _read_label_map(path)
    if labels.dtype in (np.uint8, np.uint16):
        counts = np.bincount(labels.ravel())
        values = np.flatnonzero(counts)
        counts = counts[values]
    else:
        values, counts = np.unique(labels, return_counts=True)
    return labels.shape, values.tolist(), counts.tolist()


def default_cache_dir() -> str:
    """Name the folder where label scans are remembered between runs.

    Returns:
        ``$XDG_CACHE_HOME/snella_seg``, or ``~/.cache/snella_seg`` when that variable is unset or empty.
    """
    return osp.join(os.environ.get('XDG_CACHE_HOME') or osp.join(osp.expanduser('~'), '.cache'), 'snella_seg')


class _ScanCache:
    """Facts about files (sizes, label values) keyed by absolute path, valid while file size and mtime match."""

    def __init__(self, cache_file: Optional[str]) -> None:
        self.cache_file = cache_file
        self.entries: Dict[str, list] = {}
        self.changed = False
        if cache_file and osp.isfile(cache_file):
            try:
                with open(cache_file, encoding='utf-8') as stream:
                    stored = json.load(stream)
                if stored.get('version') == SCAN_CACHE_VERSION:
                    self.entries = stored['entries']
            except (OSError, ValueError, KeyError, AttributeError):
                self.entries = {}  # unreadable cache: scan again and rewrite it

    @staticmethod
    def _stamp(path: str) -> List[int]:
        status = os.stat(path)
        return [status.st_size, status.st_mtime_ns]

    def get(self, kind: str, path: str) -> Optional[list]:
        entry = self.entries.get(f'{kind}:{osp.abspath(path)}')
        if entry is not None and entry[:2] == self._stamp(path):
            return entry[2:]
        return None

    def put(self, kind: str, path: str, facts: list) -> None:
        self.entries[f'{kind}:{osp.abspath(path)}'] = self._stamp(path) + facts
        self.changed = True

    def save(self) -> None:
        if not (self.cache_file and self.changed):
            return
        try:
            os.makedirs(osp.dirname(self.cache_file), exist_ok=True)
            partial = f'{self.cache_file}.{os.getpid()}.tmp'
            with open(partial, 'w', encoding='utf-8') as stream:
                json.dump(dict(version=SCAN_CACHE_VERSION, entries=self.entries), stream, separators=(',', ':'))
            os.replace(partial, self.cache_file)
        except OSError:  # a read-only cache folder only costs the next run its speed
            pass


def _cache_file(cache_dir: Optional[str], img_dir: str, ann_dir: str, img_suffix: str, seg_suffix: str):
    if cache_dir is None:
        return None
    folders = '|'.join((osp.abspath(img_dir), img_suffix, osp.abspath(ann_dir), seg_suffix))
    return osp.join(cache_dir, 'label_scan_' + hashlib.sha1(folders.encode()).hexdigest()[:16] + '.json')


class _Progress:
    """A line every few seconds while many files are decoded, and a summary after a scan that took that long."""

    def __init__(self, report: Optional[Callable[[str], None]], total: int, what: str) -> None:
        self.report, self.total, self.what = report, total, what
        self.decoded, self.started = 0, time.monotonic()
        self.last_report = self.started

    def tick(self, done: int) -> None:
        self.decoded += 1
        now = time.monotonic()
        if self.report and now - self.last_report >= PROGRESS_INTERVAL_S:
            self.last_report = now
            self.report(f'{self.what}: {done}/{self.total} files ({now - self.started:.0f} s)')

    def finish(self, cache_file: Optional[str]) -> None:
        if self.report and time.monotonic() - self.started >= PROGRESS_INTERVAL_S:
            remembered = f'; remembered in {cache_file}' if cache_file else ''
            self.report(f'{self.what}: decoded {self.decoded} of {self.total} files in '
                        f'{time.monotonic() - self.started:.1f} s (the rest unchanged since the last scan)'
                        f'{remembered}')


def _valid_labels_text(num_classes: int, ignore_index: int, reduce_zero_label: bool) -> str:
    if reduce_zero_label:
        text = f'0 (unlabelled, ignored) and 1..{num_classes} (classes; reduce_zero_label=True)'
        return text + (' or 255 (ignored)' if ignore_index == 255 else '')
    return f'0..{num_classes - 1} (classes) or {ignore_index} (ignore_index)'


def _invalid_values(values: List[int], num_classes: int, ignore_index: int, reduce_zero_label: bool) -> List[int]:
    if reduce_zero_label:
        # LoadAnnotations maps stored v to v - 1 and 0 to 255, but keeps a stored 255 at 255.
        return [v for v in values if not (0 <= v <= num_classes or (v == 255 and ignore_index == 255))]
    return [v for v in values if not (0 <= v < num_classes or v == ignore_index)]


def _extra_value_hint(histograms: Sequence[Tuple[str, List[int], List[int]]], num_classes: int, ignore_index: int,
                      class_names: Optional[Sequence[str]]) -> str:
    """Return both readings of labels 0..num_classes with num_classes classes, and how the data tells them apart."""
    pixels = Counter()
    for _, values, counts in histograms:
        pixels.update(dict(zip(values, counts)))
    total = sum(pixels.values())
    first_class = f' ({class_names[0]!r} in your class list)' if class_names else ''
    return (f' One value more than num_classes ({num_classes}) has two readings. (1) {num_classes} marks void or '
            f'unlabelled pixels and 0..{num_classes - 1} are your classes: rewrite {num_classes} as {ignore_index} '
            f'(ignore_index) in the label files (np.where(labels == {num_classes}, {ignore_index}, labels)) and '
            f'keep reduce_zero_label=False. (2) The labels are 1-based and 0 marks unlabelled '
            f'pixels: set reduce_zero_label=True in the dataset and in LoadAnnotations. Tell them apart by what 0 '
            f'is: if 0 is your first class{first_class} it is (1), and reduce_zero_label=True would shift every '
            f'class by one. Over all {len(histograms)} annotations, 0 covers {pixels[0] / total:.1%} of the pixels '
            f'and {num_classes} covers {pixels[num_classes] / total:.1%}.')


def zero_based_labels_warning(histograms: Sequence[Tuple[str, List[int], List[int]]], num_classes: int,
                              class_names: Optional[Sequence[str]] = None) -> Optional[str]:
    """Say when label maps read with ``reduce_zero_label=True`` look 0-based (0 is a class, not "unlabelled").

    The shift maps stored value v to class v - 1 and ignores 0. On 0-based maps (CamVid: 0 = sky, void 255) value 0
    is common, the values fill 0..num_classes - 1 and num_classes never occurs: the first class would be ignored
    and the last never trained.

    Args:
        histograms: (path, label values, pixel counts) of each label map.
        num_classes: number of classes the model predicts.
        class_names: the class names, to name the classes concerned.

    Returns:
        The warning, or None when the maps do not look 0-based.
    """
    if not histograms:
        return None
    present = set().union(*(values for _, values, _ in histograms))
    maps_with_zero = sum(1 for _, values, _ in histograms if 0 in values)
    classes_seen = len(present.intersection(range(1, num_classes)))
    if (num_classes in present or maps_with_zero < ZERO_BASED_MIN_MAPS_WITH_ZERO * len(histograms)
            or classes_seen < ZERO_BASED_MIN_VALUES_PRESENT * (num_classes - 1)):
        return None
    pixels = Counter()
    for _, values, counts in histograms:
        pixels.update(dict(zip(values, counts)))
    first = f' ({class_names[0]!r})' if class_names else ''
    last = f' ({class_names[-1]!r})' if class_names else ''
    return (f'reduce_zero_label=True, but the label maps look 0-based: value 0 occurs in {maps_with_zero} of '
            f'{len(histograms)} maps ({pixels[0] / sum(pixels.values()):.1%} of the pixels) and the values reach '
            f'{num_classes - 1} but never {num_classes}. With the shift, every pixel of value 0 is ignored and the '
            f'last class{last} never occurs. If 0 is your first class{first} (e.g. CamVid: 0 = sky, void 255), set '
            'reduce_zero_label=False in the dataset and in LoadAnnotations; keep it only if 0 marks unlabelled '
            'pixels and the last class is truly absent.')


def _check_label_values(histograms: Sequence[Tuple[str, List[int], List[int]]], num_classes: int,
                        ignore_index: int, reduce_zero_label: bool,
                        class_names: Optional[Sequence[str]] = None) -> None:
    """Name every annotation with values outside the class range, and say which setting or remap fixes it.

    Raises:
        DatasetError: some annotation has values outside the class range.
    """
    offenders = []
    for path, values, _ in histograms:
        bad = _invalid_values(values, num_classes, ignore_index, reduce_zero_label)
        if bad:
            offenders.append((path, bad))
    if not offenders:
        return
    first_path, first_bad = offenders[0]
    message = (f'annotation {first_path!r} has label values {_listed(first_bad)} outside the valid range: '
               f'{_valid_labels_text(num_classes, ignore_index, reduce_zero_label)}.')
    files_per_value = Counter(value for _, bad in offenders for value in bad)
    if len(offenders) > 1:
        per_value = ', '.join(f'{value} in {count}' for value, count in sorted(files_per_value.items()))
        message += (f' {len(offenders)} of {len(histograms)} annotations have such values ({per_value}): '
                    f'{_listed([path for path, _ in offenders])}.')
    if not reduce_zero_label and sorted(files_per_value) == [num_classes]:
        message += _extra_value_hint(histograms, num_classes, ignore_index, class_names)
    else:
        message += (f' Check that num_classes ({num_classes}) matches the dataset\'s class list, or remap these '
                    f'values to {ignore_index} (ignored).')
    raise DatasetError(message)


def _scan_pair(image_path: str, label_path: str, read_label_values: bool, cache: _ScanCache):
    """Compare one image's size with its annotation's, reading each file only when the cache lacks it.

    Returns:
        The annotation's label facts ([shape, values, counts], or None unless ``read_label_values``), and whether
        a file was decoded.

    Raises:
        DatasetError: the sizes differ, or a file cannot be decoded.
    """
    decoded = False
    image_shape = cache.get('shape', image_path)
    if image_shape is None:
        image_shape = list(_decoded_shape(image_path, 'image'))
        cache.put('shape', image_path, image_shape)
        decoded = True
    label_facts = None
    if read_label_values:
        label_facts = cache.get('labels', label_path)
        if label_facts is None:
            shape, values, counts = _label_histogram(label_path)
            label_facts = [list(shape), values, counts]
            cache.put('labels', label_path, label_facts)
            decoded = True
        label_shape = label_facts[0]
    else:
        label_shape = cache.get('shape', label_path)
        if label_shape is None:
            label_shape = list(_decoded_shape(label_path, 'annotation'))
            cache.put('shape', label_path, label_shape)
            decoded = True
    if image_shape != label_shape:
        raise DatasetError(f'image {image_path!r} is {image_shape[1]}x{image_shape[0]} but its annotation '
                           f'{label_path!r} is {label_shape[1]}x{label_shape[0]} (width x height); '
                           'each label map must have its image\'s size.')
    return label_facts, decoded


def _scan(pairs: List[Tuple[str, str]], read_label_values: bool, cache: _ScanCache, progress: _Progress,
          problems: _Problems) -> List[Tuple[str, List[int], List[int]]]:
    """Compare every image's size with its annotation's and collect each annotation's label values.

    A pair with a problem is recorded in ``problems`` and left out of the label values.

    Returns:
        (annotation path, label values, pixel counts) of each annotation whose values were read.
    """
    histograms = []
    for done, (image_path, label_path) in enumerate(pairs, 1):
        scanned = problems.record(lambda: _scan_pair(image_path, label_path, read_label_values, cache),
                                  image_path, label_path)
        if scanned is None:
            continue
        label_facts, decoded = scanned
        if label_facts is not None:
            histograms.append((label_path, label_facts[1], label_facts[2]))
        if decoded:
            progress.tick(done)
    return histograms


def check_segmentation_folder(img_dir: str, ann_dir: str, num_classes: int, ignore_index: int = 255,
                              reduce_zero_label: bool = False, img_suffix: str = '.jpg', seg_suffix: str = '.png',
                              split_file: Optional[str] = None, check_label_values: bool = True,
                              max_image_decodes: Optional[int] = None, cache_dir: Optional[str] = None,
                              class_names: Optional[Sequence[str]] = None,
                              progress: Optional[Callable[[str], None]] = None,
                              warn: Optional[Callable[[str], None]] = None) -> int:
    """Check an image folder and its annotation folder; raise ``DatasetError`` naming every offending file.

    Problems with single files (empty, truncated or undecodable files, size mismatches, label values out of
    range) are collected over the whole data set and reported together (at most ``MAX_PROBLEMS_REPORTED``, with
    their count); problems with the layout (missing folders or files, unmatched names) stop the check at once.
    Every sample is checked for both files being present and complete and for the image and its annotation having
    the same size; every annotation is decoded and its label values checked against the class range (unless
    ``check_label_values`` is False, for raw masks that only become class ids in the pipeline). ``max_image_decodes``
    images (all when None), spread evenly over the data set, are fully decoded as training would. With
    ``cache_dir``, what was read from each file is remembered by path, size and mtime, so a second check of
    unchanged data decodes nothing. ``progress`` receives a line every few seconds of a long scan, and a summary.
    Names come from ``split_file`` (one per line, as mmseg's ``ann_file``) when given, else from the image folder.

    Args:
        img_dir: folder of the images.
        ann_dir: folder of the label maps.
        num_classes: number of classes the model predicts.
        ignore_index: label value that the loss ignores.
        reduce_zero_label: whether LoadAnnotations maps 0 to ignored and shifts the other values down by one.
        img_suffix: suffix of the image files.
        seg_suffix: suffix of the label map files.
        split_file: file of sample names, one a line; None takes every image in ``img_dir``.
        check_label_values: whether to check the label values against the class range.
        max_image_decodes: images to decode fully (None: all).
        cache_dir: folder where what was read is remembered between checks (None: nowhere).
        class_names: the class names, for the hints of the messages.
        progress: receives the progress lines of a long scan.
        warn: receives warnings about data that trains but likely not as meant (``reduce_zero_label=True`` on
            0-based maps); None issues them with ``warnings.warn``.

    Returns:
        The number of samples.

    Raises:
        DatasetError: the data has problems; the message lists them, with their fixes.
        ValueError: an argument is out of range.
    """
    if num_classes < 1:
        raise ValueError(f'num_classes must be at least 1, got {num_classes}')
    if max_image_decodes is not None and max_image_decodes < 0:
        raise ValueError(f'max_image_decodes must be None or at least 0, got {max_image_decodes}')
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

    pairs = [(osp.join(img_dir, name + img_suffix), osp.join(ann_dir, name + seg_suffix)) for name in names]
    problems = _Problems()
    for image_path, label_path in pairs:
        problems.record(lambda: _check_complete(image_path, 'image'), image_path)
        problems.record(lambda: _check_complete(label_path, 'annotation'), label_path)

    num_decoded = len(names) if max_image_decodes is None else min(max_image_decodes, len(names))
    for index in np.unique(np.linspace(0, len(names) - 1, num_decoded).round().astype(int)):
        image_path = pairs[index][0]
        if image_path not in problems.bad_paths:
            problems.record(lambda: _read_image(image_path), image_path)

    cache_file = _cache_file(cache_dir, img_dir, ann_dir, img_suffix, seg_suffix)
    cache = _ScanCache(cache_file)
    progress_lines = _Progress(progress, len(names), f'checking {ann_dir}')
    intact = [pair for pair in pairs if not problems.bad_paths.intersection(pair)]
    try:
        histograms = _scan(intact, check_label_values, cache, progress_lines, problems)
    finally:
        cache.save()  # what was read before a failure stays remembered
    progress_lines.finish(cache_file)
    if check_label_values:
        problems.record(lambda: _check_label_values(histograms, num_classes, ignore_index, reduce_zero_label,
                                                    class_names))
    problems.raise_if_any()
    if check_label_values and reduce_zero_label:
        warning = zero_based_labels_warning(histograms, num_classes, class_names)
        if warning:
            (warn or warnings.warn)(warning)
    return len(names)
