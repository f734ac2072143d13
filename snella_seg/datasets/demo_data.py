"""Small synthetic segmentation datasets in the real ADE20K and Pascal Context 59 folder layouts.

They let configs, training and evaluation run end to end without the real data sets, and carry learnable
structure (each class has its own colour, texture and shape) so a tiny model trained a few hundred iterations
measurably raises mIoU. Pure numpy + OpenCV, deterministic given the seed.
"""
import os
import os.path as osp
import shutil
from dataclasses import dataclass
from typing import Dict, List, Tuple

import cv2
import numpy as np

# Written into every generated data root; regenerating only replaces a folder that carries it, so real data
# placed at the same path is never overwritten.
DEMO_MARKER_FILE = 'SNELLA_DEMO_DATA.txt'


@dataclass(frozen=True)
class DemoClass:
    """How one demo class looks, so that a model can learn it from colour, texture and shape.

    Attributes:
        name: Class name, as in the real data set's class list.
        rgb: Base colour, jittered per sample.
        texture: Pattern drawn in the colour (``'hstripes'``, ``'checker'``, ...).
        period: The pattern's period in pixels.
        shape: Outline of an object (``'ellipse'``, ``'rectangle'``, ...), or ``'background'`` for wall and floor.
    """

    name: str
    rgb: Tuple[int, int, int]
    texture: str
    period: int
    shape: str


# Two background classes split the image at a random horizon: wall above, floor below.
WALL = DemoClass('wall', (176, 168, 150), 'speckle', 3, 'background')
FLOOR = DemoClass('floor', (122, 84, 56), 'planks', 10, 'background')
OBJECT_CLASSES = (
    DemoClass('person', (205, 45, 55), 'hstripes', 6, 'ellipse'),
    DemoClass('car', (45, 75, 205), 'checker', 8, 'rectangle'),
    DemoClass('tree', (40, 160, 60), 'dots', 5, 'triangle'),
    DemoClass('bottle', (30, 185, 195), 'vstripes', 4, 'diamond'),
    DemoClass('bicycle', (230, 200, 40), 'diagonal', 7, 'circle'),
    DemoClass('plate', (180, 60, 190), 'rings', 6, 'hexagon'),
)
DEMO_CLASSES = (WALL, FLOOR) + OBJECT_CLASSES

# Stored annotation value of each demo class (0 is "unlabelled" in both layouts; mmseg drops it with
# reduce_zero_label=True, so the model sees these values minus one).
ADE20K_CLASS_IDS: Dict[str, int] = {
    'wall': 1, 'floor': 4, 'tree': 5, 'person': 13, 'car': 21, 'bottle': 99, 'bicycle': 128, 'plate': 143}
PASCAL_CONTEXT_CLASS_IDS: Dict[str, int] = {
    'wall': 56, 'floor': 26, 'tree': 53, 'person': 37, 'car': 14, 'bottle': 10, 'bicycle': 6, 'plate': 38}
UNLABELLED = 0


def _texture_mask(texture: str, period: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Draw a class's binary texture (True = bright) at its period on the given pixel coordinates.

    Returns:
        A boolean array of the coordinates' shape.

    Raises:
        ValueError: If the texture is unknown.
    """
    half = period / 2
    if texture == 'hstripes':
        return (yy % period) < half
    if texture == 'vstripes':
        return (xx % period) < half
    if texture == 'diagonal':
        return ((xx + yy) % period) < half
    if texture == 'checker':
        return ((xx // half + yy // half) % 2) == 0
    if texture == 'dots':
        dy, dx = yy % period - half, xx % period - half
        return dy * dy + dx * dx > (0.3 * period) ** 2
    if texture == 'rings':
        return (np.hypot(yy, xx) % period) < half
    if texture == 'planks':
        return (yy % period) > 1
    if texture == 'speckle':
        return ((xx * 7 + yy * 13) % period) != 0
    raise ValueError(f'unknown texture {texture!r}')


def _shape_mask(shape: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Draw the filled outline of one object at a random position, size and small tilt.

    Returns:
        A boolean ``(height, width)`` mask.

    Raises:
        ValueError: If the shape is unknown.
    """
    mask = np.zeros((height, width), np.uint8)
    center = rng.uniform(0.1, 0.9, 2) * np.array([width, height])
    radius = rng.uniform(0.08, 0.22) * min(height, width)
    tilt = rng.uniform(-0.3, 0.3)
    if shape in ('ellipse', 'circle'):
        width, height = (2 * radius, 2 * radius) if shape == 'circle' else (1.2 * radius, 2.2 * radius)
        cv2.ellipse(mask, (tuple(center.tolist()), (width, height), float(np.degrees(tilt))), 1, -1)
        return mask.astype(bool)
    # (vertices, angle of the first vertex, vertical stretch) of a regular polygon; image y points down.
    polygons: Dict[str, Tuple[int, float, float]] = {
        'rectangle': (4, np.pi / 4, 0.6), 'triangle': (3, -np.pi / 2, 1.0),
        'diamond': (4, 0.0, 1.8), 'hexagon': (6, 0.0, 1.0)}
    if shape not in polygons:
        raise ValueError(f'unknown shape {shape!r}')
    num_vertices, first_angle, stretch = polygons[shape]
    theta = first_angle + np.arange(num_vertices) * 2 * np.pi / num_vertices
    upright = np.stack([np.cos(theta), np.sin(theta) * stretch], axis=1) * radius
    rotation = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]])
    vertices = np.round(center + upright @ rotation.T).astype(np.int32)
    cv2.fillPoly(mask, [vertices], 1)
    return mask.astype(bool)


def _paint(image: np.ndarray, region: np.ndarray, demo_class: DemoClass, rng: np.random.Generator,
           yy: np.ndarray, xx: np.ndarray) -> None:
    """Fill ``region`` of ``image`` with the class texture in a jittered version of its colour."""
    base = np.asarray(demo_class.rgb, np.float32) * rng.uniform(0.75, 1.2) + rng.uniform(-20, 20, 3)
    offset_y, offset_x = rng.integers(0, demo_class.period, 2)
    bright = _texture_mask(demo_class.texture, demo_class.period, yy + offset_y, xx + offset_x)
    shade = np.where(bright, 1.0, 0.55)[..., None] * base
    image[region] = shade[region]


def _render_sample(height: int, width: int, class_ids: Dict[str, int], rng: np.random.Generator,
                   unlabelled: int = UNLABELLED) -> Tuple[np.ndarray, np.ndarray]:
    """Render one sample: wall/floor, 2-5 objects and up to 3 clutter blobs labelled ``unlabelled``.

    Returns:
        A BGR uint8 image and its uint8 label map.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), np.float32)
    labels = np.zeros((height, width), np.uint8)

    horizon = int(rng.uniform(0.4, 0.75) * height)
    for demo_class, region in ((WALL, yy < horizon), (FLOOR, yy >= horizon)):
        _paint(image, region, demo_class, rng, yy, xx)
        labels[region] = class_ids[demo_class.name]
    image *= np.clip(1.0 - 0.3 * (yy / height - 0.5), 0.8, 1.2)[..., None]  # soft vertical lighting gradient

    for class_index in rng.integers(0, len(OBJECT_CLASSES), rng.integers(2, 6)):
        demo_class = OBJECT_CLASSES[class_index]
        region = _shape_mask(demo_class.shape, height, width, rng)
        _paint(image, region, demo_class, rng, yy, xx)
        labels[region] = class_ids[demo_class.name]

    for _ in range(rng.integers(0, 4)):  # clutter that no class describes, left unlabelled as in the real data
        blob = np.zeros((height, width), np.uint8)
        points = rng.uniform(0, 1, (1, 2)) * np.array([width, height]) + rng.normal(0, 0.08 * min(height, width),
                                                                                    (6, 2))
        cv2.fillPoly(blob, [cv2.convexHull(points.astype(np.int32))], 1)
        region = blob.astype(bool)
        image[region] = rng.uniform(60, 200) + rng.normal(0, 25, (int(region.sum()), 1))
        labels[region] = unlabelled

    image *= rng.uniform(0.9, 1.1, 3)  # global colour cast
    image += rng.normal(0, 10, image.shape)
    image = cv2.GaussianBlur(image, (3, 3), 0.6)
    rgb = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), labels


def _prepare_root(data_root: str, description: str, num_train: int, num_val: int, size: int) -> None:
    """Empty a previous demo data root, refusing to touch a non-empty folder that was not generated here.

    Raises:
        ValueError: If a count is negative or ``size`` is below 16 pixels.
        FileExistsError: If ``data_root`` holds files but no demo marker: it may be a real data set.
    """
    if num_train < 0 or num_val < 0 or size < 16:
        raise ValueError(f'need num_train >= 0, num_val >= 0 and size >= 16 (pixels), got num_train={num_train}, '
                         f'num_val={num_val}, size={size}')
    if osp.isdir(data_root) and os.listdir(data_root):
        if not osp.isfile(osp.join(data_root, DEMO_MARKER_FILE)):
            raise FileExistsError(
                f'{data_root} exists and holds files that were not generated by make_demo_data; refusing to '
                'overwrite what may be a real data set. Choose another output folder.')
        shutil.rmtree(data_root)
    os.makedirs(data_root, exist_ok=True)
    with open(osp.join(data_root, DEMO_MARKER_FILE), 'w', encoding='utf-8') as marker:
        marker.write(description + '\n')


def _write_split(names: List[str], image_dir: str, label_dir: str, size: int, class_ids: Dict[str, int],
                 rng: np.random.Generator, odd_sizes: bool = False, unlabelled: int = UNLABELLED) -> None:
    """Square ``size`` images, or with ``odd_sizes`` a different shape per image that is no multiple of a patch."""
    for name in names:
        height, width = _odd_shape(size, rng) if odd_sizes else (size, size)
        image, labels = _render_sample(height, width, class_ids, rng, unlabelled)
        cv2.imwrite(osp.join(image_dir, name + '.jpg'), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        cv2.imwrite(osp.join(label_dir, name + '.png'), labels)


def _odd_shape(size: int, rng: np.random.Generator) -> Tuple[int, int]:
    """Return a (height, width) around ``size``, landscape like most photos, each side odd so no patch divides it."""
    height, width = (int(side) | 1 for side in rng.uniform([0.7, 1.0], [1.0, 1.5]) * size)
    return height, width


def _split_rngs(seed: int) -> Tuple[np.random.Generator, np.random.Generator]:
    """Return independent streams for train and val, so changing one split's size leaves the other unchanged."""
    return np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])


def _class_table(class_ids: Dict[str, int]) -> str:
    """Return how each class looks and its stored id, for the marker file."""
    return ', '.join(f'{c.name}={class_ids[c.name]} ({c.shape}, {c.texture}, rgb{c.rgb})' for c in DEMO_CLASSES)


def make_ade20k_like(root: str, num_train: int = 40, num_val: int = 10, size: int = 128, seed: int = 0) -> str:
    """Write a demo data set in the ADE20K layout under ``root`` and return its data root.

    Layout: ``ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_%08d.jpg`` with label maps of the
    same stem under ``annotations/`` (0 = unlabelled, classes as in ``ADE20K_CLASS_IDS``).

    Args:
        root: Folder to write into; a demo data set already there is replaced.
        num_train: Number of training images.
        num_val: Number of validation images.
        size: Image side in pixels (at least 16).
        seed: Seed of the generators; the same seed writes the same files.

    Returns:
        The data root, ``root/ADEChallengeData2016``.

    Raises:
        ValueError: If a count is negative or ``size`` is below 16.
        FileExistsError: If the data root holds files that were not generated here (maybe a real data set).
    """
    data_root = osp.join(root, 'ADEChallengeData2016')
    _prepare_root(data_root, 'snella-seg demo data, ADE20K layout. Stored class ids: ' + _class_table(
        ADE20K_CLASS_IDS), num_train, num_val, size)
    for split, prefix, count, rng in zip(('training', 'validation'), ('ADE_train', 'ADE_val'),
                                         (num_train, num_val), _split_rngs(seed)):
        image_dir = osp.join(data_root, 'images', split)
        label_dir = osp.join(data_root, 'annotations', split)
        os.makedirs(image_dir)
        os.makedirs(label_dir)
        names = [f'{prefix}_{index:08d}' for index in range(1, count + 1)]
        _write_split(names, image_dir, label_dir, size, ADE20K_CLASS_IDS, rng)
    return data_root


def make_pascal_context_like(root: str, num_train: int = 40, num_val: int = 10, size: int = 128,
                             seed: int = 0) -> str:
    """Write a demo data set in mmseg's Pascal Context 59 layout under ``root`` and return its data root.

    Layout: ``VOCdevkit/VOC2010/JPEGImages/<id>.jpg``, ``SegmentationClassContext/<id>.png`` (0 = background,
    classes as in ``PASCAL_CONTEXT_CLASS_IDS``) and ``ImageSets/SegmentationContext/{train,val}.txt``.

    Args:
        root: Folder to write into; a demo data set already there is replaced.
        num_train: Number of training images.
        num_val: Number of validation images.
        size: Image side in pixels (at least 16).
        seed: Seed of the generators; the same seed writes the same files.

    Returns:
        The data root, ``root/VOCdevkit/VOC2010``.

    Raises:
        ValueError: If a count is negative or ``size`` is below 16.
        FileExistsError: If the data root holds files that were not generated here (maybe a real data set).
    """
    data_root = osp.join(root, 'VOCdevkit', 'VOC2010')
    _prepare_root(data_root, 'snella-seg demo data, Pascal Context 59 layout. Stored class ids: ' + _class_table(
        PASCAL_CONTEXT_CLASS_IDS), num_train, num_val, size)
    image_dir = osp.join(data_root, 'JPEGImages')
    label_dir = osp.join(data_root, 'SegmentationClassContext')
    split_dir = osp.join(data_root, 'ImageSets', 'SegmentationContext')
    for folder in (image_dir, label_dir, split_dir):
        os.makedirs(folder)
    first_index = 1
    for split, count, rng in zip(('train', 'val'), (num_train, num_val), _split_rngs(seed)):
        names = [f'2008_{index:06d}' for index in range(first_index, first_index + count)]
        first_index += count
        _write_split(names, image_dir, label_dir, size, PASCAL_CONTEXT_CLASS_IDS, rng)
        with open(osp.join(split_dir, split + '.txt'), 'w', encoding='utf-8') as split_file:
            split_file.write(''.join(name + '\n' for name in names))
    return data_root


# Label value of each class in the custom layout: ids 0..7 in DEMO_CLASSES order, clutter 255 (ignored).
CUSTOM_CLASS_IDS: Dict[str, int] = {c.name: index for index, c in enumerate(DEMO_CLASSES)}
CUSTOM_IGNORE = 255


def make_custom_like(root: str, num_train: int = 40, num_val: int = 10, size: int = 128, seed: int = 0) -> str:
    """Write a demo data set in the layout of ``configs/custom/`` into ``root`` itself and return it.

    Layout: ``img_dir/{train,val}/<id>.jpg`` and ``ann_dir/{train,val}/<id>.png`` with class ids 0-7 (the classes of
    ``DEMO_CLASSES``, in that order) and 255 for unlabelled clutter. Every image has its own size around ``size``
    with odd sides, like photographs that no patch size divides.

    Args:
        root: Folder to write into (the data root itself); a demo data set already there is replaced.
        num_train: Number of training images.
        num_val: Number of validation images.
        size: Image side in pixels (at least 16), around which each image's sides vary.
        seed: Seed of the generators; the same seed writes the same files.

    Returns:
        ``root``.

    Raises:
        ValueError: If a count is negative or ``size`` is below 16.
        FileExistsError: If the data root holds files that were not generated here (maybe a real data set).
    """
    _prepare_root(root, 'snella-seg demo data, custom layout (configs/custom/). Class ids: ' + _class_table(
        CUSTOM_CLASS_IDS) + f'; {CUSTOM_IGNORE} = unlabelled', num_train, num_val, size)
    for split, count, rng in zip(('train', 'val'), (num_train, num_val), _split_rngs(seed)):
        image_dir = osp.join(root, 'img_dir', split)
        label_dir = osp.join(root, 'ann_dir', split)
        os.makedirs(image_dir)
        os.makedirs(label_dir)
        names = [f'{split}_{index:04d}' for index in range(1, count + 1)]
        _write_split(names, image_dir, label_dir, size, CUSTOM_CLASS_IDS, rng, odd_sizes=True,
                     unlabelled=CUSTOM_IGNORE)
    return root
