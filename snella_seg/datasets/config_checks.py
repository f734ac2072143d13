"""Check the data folders a config points at before the Runner builds anything (clear errors, early)."""
import inspect
import os.path as osp
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence

from .validation import DatasetError, check_segmentation_folder, default_cache_dir

if TYPE_CHECKING:  # for type hints only: the folder checks work without OpenMMLab installed
    from mmengine.config import Config

TRAIN_LOADERS = ('train_dataloader', 'val_dataloader')
TEST_LOADERS = ('test_dataloader',)
# Images fully decoded per split (every label map is decoded, every image's size is read from its header).
IMAGE_DECODE_SAMPLES = 20


def _dataset_class(dataset_type: str):
    from mmseg.registry import DATASETS
    return DATASETS.get(dataset_type)


def _dataset_defaults(dataset_type: str) -> Dict[str, Any]:
    """Return the constructor defaults of a registered mmseg dataset (suffixes, reduce_zero_label)."""
    cls = _dataset_class(dataset_type)
    if cls is None:
        return {}
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _leaf_datasets(dataset: Dict[str, Any]):
    """Yield the datasets that read folders, unwrapping RepeatDataset / ConcatDataset style wrappers."""
    if 'datasets' in dataset:
        for inner in dataset['datasets']:
            yield from _leaf_datasets(inner)
    elif 'dataset' in dataset:
        yield from _leaf_datasets(dataset['dataset'])
    else:
        yield dataset


def _class_names(dataset: Dict[str, Any]) -> Optional[Sequence[str]]:
    classes = (dataset.get('metainfo') or {}).get('classes')
    if classes is None:
        classes = getattr(_dataset_class(dataset.get('type', '')), 'METAINFO', {}).get('classes')
    return classes


def _print_progress(line: str) -> None:
    from mmengine.logging import print_log
    print_log(line, logger='current')


def _print_warning(line: str) -> None:
    import logging

    from mmengine.logging import print_log
    print_log(line, logger='current', level=logging.WARNING)


def check_dataset_config(dataset: Dict[str, Any], num_classes: int, where: str,
                         cache_dir: Optional[str] = None) -> Optional[int]:
    """Validate one dataset config's folders with ``check_segmentation_folder``.

    Every label map is read; the scan is remembered in ``cache_dir``, so an unchanged data set is not read again.

    Args:
        dataset: the dataset config; the registered dataset class supplies the defaults it leaves out.
        num_classes: number of classes the model predicts.
        where: the config key of the dataset, which starts every message (e.g. ``train_dataloader.dataset``).
        cache_dir: folder for the remembered scans; None takes ``default_cache_dir()`` (``~/.cache/snella_seg``).

    Returns:
        The number of samples, or None when the dataset has no folder layout (``data_prefix`` without
        ``img_path`` and ``seg_map_path``).

    Raises:
        DatasetError: ``data_root`` does not exist, or the data has problems; the message lists them and their fixes.
    """
    args = dict(_dataset_defaults(dataset.get('type', '')), **dataset)
    prefix = args.get('data_prefix') or {}
    if 'img_path' not in prefix or 'seg_map_path' not in prefix:
        return None
    root = args.get('data_root') or ''
    if root and not osp.isdir(root):
        from .prepare import prepare_command  # here: its download stack is needed only for this message
        command = prepare_command(root)
        fetch = f'Make it with: {command}. Or put' if command else 'Put'
        raise DatasetError(f'{where}: data_root {root!r} does not exist. {fetch} the data there (mmseg layout) or '
                           f'set {where}.data_root with --cfg-options; for a demo run tools/make_demo_data.py')
    split = args.get('ann_file') or None
    # Datasets whose raw label files only become class ids in the pipeline (e.g. JPEG masks) skip value checks.
    raw_labels = getattr(_dataset_class(dataset.get('type', '')), 'LABEL_VALUES_NEED_PIPELINE', False)
    try:
        return check_segmentation_folder(
            osp.join(root, prefix['img_path']), osp.join(root, prefix['seg_map_path']), num_classes,
            ignore_index=args.get('ignore_index', 255), reduce_zero_label=bool(args.get('reduce_zero_label')),
            img_suffix=args.get('img_suffix', '.jpg'), seg_suffix=args.get('seg_map_suffix', '.png'),
            split_file=osp.join(root, split) if split else None, check_label_values=not raw_labels,
            max_image_decodes=IMAGE_DECODE_SAMPLES, cache_dir=cache_dir or default_cache_dir(),
            class_names=_class_names(dataset), progress=_print_progress,
            warn=lambda line: _print_warning(f'{where}: {line}'))
    except DatasetError as err:
        raise DatasetError(f'{where}: {err}') from None


def check_crop_matches_preprocessor(cfg: 'Config') -> None:
    """Refuse a training RandomCrop whose crop_size differs from the data preprocessor's size.

    mmseg pads every batch to ``data_preprocessor.size``, so smaller crops would silently train on padding.

    Args:
        cfg: the run's config.

    Raises:
        ValueError: a RandomCrop of the training pipeline crops to another size; the message shows how to set both.
    """
    preprocessor = cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor') or {}
    size = preprocessor.get('size')
    if size is None or cfg.get('train_dataloader') is None:
        return
    for dataset in _leaf_datasets(cfg.train_dataloader['dataset']):
        for transform in dataset.get('pipeline') or []:
            if transform.get('type') != 'RandomCrop' or tuple(transform['crop_size']) == tuple(size):
                continue
            crop = tuple(transform['crop_size'])
            raise ValueError(
                f'the training pipeline crops {crop} (RandomCrop crop_size) but model.data_preprocessor.size is '
                f'{tuple(size)}, so every batch would be padded to {tuple(size)}. Set both from one value: '
                f'crop_size = {crop} and model = dict(data_preprocessor=dict(size=crop_size)) in the config (or '
                f'--cfg-options model.data_preprocessor.size="{crop}"), and the test_cfg crop_size of slide '
                'inference to match.')


def check_config_datasets(cfg: 'Config', loaders: Sequence[str] = TRAIN_LOADERS) -> None:
    """Check the named dataloaders' folders against the decode head's number of classes, before the Runner starts.

    With the train dataloader among ``loaders``, also check that training crops match the data preprocessor.

    Args:
        cfg: the run's config.
        loaders: the dataloaders to check: ``TRAIN_LOADERS`` (train and val data) for training, ``TEST_LOADERS``
            for testing.

    Raises:
        DatasetError: a dataset's folders have problems; the message names the dataloader, the files and the fixes.
        ValueError: a training crop differs from the data preprocessor's size.
    """
    if 'train_dataloader' in loaders:
        check_crop_matches_preprocessor(cfg)
    num_classes = cfg.model.get('decode_head', {}).get('num_classes')
    if num_classes is None:
        return
    for loader in loaders:
        if cfg.get(loader) is None:
            continue
        for index, dataset in enumerate(_leaf_datasets(cfg[loader]['dataset'])):
            check_dataset_config(dataset, num_classes, f'{loader}.dataset' + (f'[{index}]' if index else ''))
