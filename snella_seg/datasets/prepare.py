"""Fetch, unpack and convert the zoo's data sets into the layouts their configs read, then check them.

ADE20K and Kvasir-SEG ship in a usable layout (Kvasir-SEG without a split: ``kvasir_split`` writes a fixed seeded
one). Pascal Context 59 is VOC2010's images plus the PASCAL-Context release's 459-class label maps, converted to
mmseg's 59 classes here (``pascal_context``) without the Detail API; its train/val split is PASCAL-Context's, which
is VOC2010's ``ImageSets/Main/train.txt`` and ``val.txt`` (4998 and 5105 images).
"""
import os
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ..utils.fetch import DownloadInterrupted, FetchError, check_hash, fetch, with_mirror
from .pascal_context import LABELS_459, convert_label_map, read_label_map
from .validation import check_segmentation_folder

__all__ = ['DownloadInterrupted', 'FetchError', 'RECIPES', 'kvasir_split', 'prepare_dataset', 'check_prepared',
           'unpack']

DOWNLOADS = 'downloads'
KVASIR_SPLIT_SEED = 0
KVASIR_TRAIN_SHARE = 0.88  # 880 of the 1000 images, the split the Kvasir-SEG literature reports


@dataclass(frozen=True)
class Archive:
    """One file a data set is made from.

    Args:
        file_name: the publisher's file name (also what ``--from-archive`` files are matched by).
        url: the publisher's download.
        known_hash: ``alg:hex``, or None where no hash is published.
        unpack_into: the folder under the data root the archive is unpacked into.
    """

    file_name: str
    url: str
    known_hash: Optional[str]
    unpack_into: str


@dataclass(frozen=True)
class SplitCheck:
    """One split the data check reads (folders relative to the data set's root)."""

    img_dir: str
    ann_dir: str
    split_file: Optional[str] = None


@dataclass(frozen=True)
class DatasetRecipe:
    """How one data set is made: archives, conversion, and what its config reads.

    Args:
        name: the name ``tools/prepare_data.py`` takes.
        root: the data set's root under ``--root``, as the config's ``data_root`` has it.
        archives: the files to fetch.
        convert: turns the unpacked archives (the data root) into the config's layout.
        splits: what the data check reads.
        num_classes: classes after ``reduce_zero_label``.
        reduce_zero_label: whether stored value 0 is ignored.
        img_suffix: the images' suffix.
        seg_suffix: the label maps' suffix.
        check_label_values: False where raw masks become class ids only in the pipeline (Kvasir-SEG's JPEGs).
    """

    name: str
    root: str
    archives: Tuple[Archive, ...]
    convert: Callable[[Path, Path], None]
    splits: Tuple[SplitCheck, ...]
    num_classes: int
    reduce_zero_label: bool
    img_suffix: str = '.jpg'
    seg_suffix: str = '.png'
    check_label_values: bool = True


def _nothing_to_convert(data_root: Path, dataset_root: Path) -> None:
    """ADE20K's release already has mmseg's layout."""


def convert_pascal_context(data_root: Path, dataset_root: Path) -> None:
    """Write ``SegmentationClassContext`` (59-class PNGs) and ``ImageSets/SegmentationContext`` split lists.

    Args:
        data_root: the ``--root`` folder the archives were unpacked into.
        dataset_root: ``VOCdevkit/VOC2010`` under it.

    Raises:
        FetchError: the label maps or VOC2010's split lists are missing.
    """
    _check_label_list(dataset_root / 'labels.txt')
    mats = dataset_root / 'trainval'
    if not mats.is_dir():
        raise FetchError(f'{mats} is missing: it comes from the PASCAL-Context release trainval.tar.gz')
    out_dir = dataset_root / 'SegmentationClassContext'
    out_dir.mkdir(exist_ok=True)
    labelled = set()
    for mat in sorted(mats.glob('*.mat')):
        cv2.imwrite(str(out_dir / f'{mat.stem}.png'), convert_label_map(read_label_map(mat)))
        labelled.add(mat.stem)
    split_dir = dataset_root / 'ImageSets' / 'SegmentationContext'
    split_dir.mkdir(parents=True, exist_ok=True)
    for split in ('train', 'val'):
        voc_split = dataset_root / 'ImageSets' / 'Main' / f'{split}.txt'
        if not voc_split.is_file():
            raise FetchError(f'{voc_split} is missing: it comes from VOC2010\'s VOCtrainval_03-May-2010.tar')
        names = sorted(name for name in voc_split.read_text().split() if name in labelled)
        (split_dir / f'{split}.txt').write_text(''.join(f'{name}\n' for name in names))


def _check_label_list(labels_txt: Path) -> None:
    """Check that the release's ``labels.txt`` ("index: name" lines), where it came with the label maps, is ours.

    Raises:
        FetchError: If it lists other classes than the 459 this converter maps.
    """
    if not labels_txt.is_file():
        return
    names = [line.split(':', 1)[1].strip() for line in labels_txt.read_text().splitlines() if ':' in line]
    if tuple(names) != LABELS_459:
        raise FetchError(f'{labels_txt} lists {len(names)} classes that differ from the 459 of the PASCAL-Context '
                         'release this converter maps; the label maps are not that release\'s')


def kvasir_split(ids: Sequence[str], seed: int = KVASIR_SPLIT_SEED) -> Tuple[List[str], List[str]]:
    """The fixed Kvasir-SEG split: the sorted ids permuted by ``numpy.random.default_rng(seed)``, the first 88% train.

    Args:
        ids: image ids (file names without suffix).
        seed: the permutation's seed.

    Returns:
        (train ids, val ids), each sorted; 880/120 for the release's 1000 images.
    """
    ordered = sorted(ids)
    permuted = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    cut = round(len(ordered) * KVASIR_TRAIN_SHARE)
    return sorted(permuted[:cut]), sorted(permuted[cut:])


def convert_kvasir(data_root: Path, dataset_root: Path) -> None:
    """Move the release's ``Kvasir-SEG/`` folder to ``kvasir-seg/`` and write ``train.txt`` / ``val.txt``.

    Args:
        data_root: the ``--root`` folder the archive was unpacked into.
        dataset_root: ``kvasir-seg`` under it.
    """
    unpacked = data_root / 'Kvasir-SEG'
    if unpacked.is_dir():
        dataset_root.mkdir(exist_ok=True)
        for part in ('images', 'masks'):
            if not (dataset_root / part).exists():
                shutil.move(str(unpacked / part), str(dataset_root / part))
        shutil.rmtree(unpacked)
    train, val = kvasir_split([path.stem for path in (dataset_root / 'images').glob('*.jpg')])
    for split, names in (('train', train), ('val', val)):
        (dataset_root / f'{split}.txt').write_text(''.join(f'{name}\n' for name in names))


RECIPES: Dict[str, DatasetRecipe] = {recipe.name: recipe for recipe in (
    DatasetRecipe(
        'ade20k', 'ade/ADEChallengeData2016',
        (Archive('ADEChallengeData2016.zip', 'http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip',
                 None, 'ade'),),
        _nothing_to_convert,
        (SplitCheck('images/training', 'annotations/training'),
         SplitCheck('images/validation', 'annotations/validation')),
        num_classes=150, reduce_zero_label=True),
    DatasetRecipe(
        'pascal-context-59', 'VOCdevkit/VOC2010',
        # The VOC2010 tarball's MD5 as torchvision's VOCSegmentation checks it.
        (Archive('VOCtrainval_03-May-2010.tar',
                 'https://thor.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar',
                 'md5:da459979d0c395079b5c75ee67908abb', '.'),
         Archive('trainval.tar.gz', 'https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz', None,
                 'VOCdevkit/VOC2010')),
        convert_pascal_context,
        tuple(SplitCheck('JPEGImages', 'SegmentationClassContext', f'ImageSets/SegmentationContext/{split}.txt')
              for split in ('train', 'val')),
        num_classes=59, reduce_zero_label=True),
    DatasetRecipe(
        'kvasir-seg', 'kvasir-seg',
        (Archive('kvasir-seg.zip', 'https://datasets.simula.no/downloads/kvasir-seg.zip', None, '.'),),
        convert_kvasir,
        tuple(SplitCheck('images', 'masks', f'{split}.txt') for split in ('train', 'val')),
        num_classes=2, reduce_zero_label=False, seg_suffix='.jpg', check_label_values=False),
)}


def prepare_command(data_root: str) -> Optional[str]:
    """Return the ``tools/prepare_data.py`` command that makes ``data_root``, or None for another layout."""
    root = Path(data_root)
    for recipe in RECIPES.values():
        layout = Path(recipe.root).parts
        if root.parts[-len(layout):] == layout:
            parent = Path(*root.parts[:-len(layout)]) if len(root.parts) > len(layout) else Path('.')
            root_option = '' if parent == Path('data') else f' --root {parent}'
            return f'python tools/prepare_data.py {recipe.name}{root_option}'
    return None


def _inside(folder: Path, member: str) -> bool:
    return os.path.realpath(folder / member).startswith(os.path.realpath(folder) + os.sep)


def unpack(archive: Path, into: Path) -> None:
    """Unpack a .zip, .tar or .tar.gz archive, refusing members that would land outside ``into``.

    Args:
        archive: the archive.
        into: the folder to unpack into (created).

    Raises:
        FetchError: an unknown archive type or a member outside ``into``.
    """
    into.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            names = bundle.namelist()
            if not all(_inside(into, name) for name in names):
                raise FetchError(f'{archive} holds paths outside the folder it is unpacked into; not unpacked')
            bundle.extractall(into)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as bundle:
            bundle.extractall(into, filter='data')
    else:
        raise FetchError(f'{archive} is neither a zip nor a tar archive')


def _archives_given(recipe: DatasetRecipe, given: Sequence[Union[str, Path]]) -> Dict[str, Path]:
    """Return the user's archives by the publisher's file name.

    Raises:
        FetchError: If a file has another name (the expected ones are named) or does not exist.
    """
    expected = {archive.file_name for archive in recipe.archives}
    found = {}
    for path in map(Path, given):
        if path.name not in expected:
            raise FetchError(f'{path.name} is not an archive of {recipe.name}; expected: {", ".join(sorted(expected))}')
        if not path.is_file():
            raise FetchError(f'{path} does not exist')
        found[path.name] = path
    return found


def prepare_dataset(name: str, root: Union[str, Path] = 'data', archives: Sequence[Union[str, Path]] = (),
                    mirror: Optional[str] = None, progress: bool = True) -> Dict[str, int]:
    """Fetch (or take ``archives``), verify, unpack and convert a data set, then run the data check over it.

    Args:
        name: a key of ``RECIPES``.
        root: the folder the configs' ``data/`` is (downloads go to ``root/downloads``).
        archives: archives the user already has, by their publisher file names; the others are downloaded.
        mirror: a server keeping the publishers' paths, used instead of their hosts.
        progress: show progress bars.

    Returns:
        The number of samples of each split the data check read, by its split file or image folder.

    Raises:
        KeyError: an unknown data set.
        FetchError: an archive is missing, of another name, or fails its hash check.
        DatasetError: the converted data fails the data check.
    """
    if name not in RECIPES:
        raise KeyError(f'no data set called {name!r}; known: {", ".join(RECIPES)}')
    recipe = RECIPES[name]
    data_root = Path(root)
    given = _archives_given(recipe, archives)
    for archive in recipe.archives:
        if archive.file_name in given:
            path = given[archive.file_name]
            if archive.known_hash:
                check_hash(path, archive.known_hash)
        else:
            path = fetch(with_mirror(archive.url, mirror), data_root / DOWNLOADS / archive.file_name,
                         archive.known_hash, progress=progress)
        unpack(path, data_root / archive.unpack_into)
    dataset_root = data_root / recipe.root
    recipe.convert(data_root, dataset_root)
    return check_prepared(recipe, dataset_root)


def check_prepared(recipe: DatasetRecipe, dataset_root: Path) -> Dict[str, int]:
    """The project's data check over each split of a prepared data set.

    Args:
        recipe: the data set's recipe.
        dataset_root: its root folder.

    Returns:
        The number of samples of each split, by split file (or image folder where there is none).

    Raises:
        DatasetError: a split fails the check.
    """
    counts = {}
    for split in recipe.splits:
        split_file = str(dataset_root / split.split_file) if split.split_file else None
        counts[split.split_file or split.img_dir] = check_segmentation_folder(
            str(dataset_root / split.img_dir), str(dataset_root / split.ann_dir), recipe.num_classes,
            reduce_zero_label=recipe.reduce_zero_label, img_suffix=recipe.img_suffix, seg_suffix=recipe.seg_suffix,
            split_file=split_file, check_label_values=recipe.check_label_values)
    return counts
