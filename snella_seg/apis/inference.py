"""Run a trained segmentor on image files and write prediction overlays (mmseg's visualizer)."""
import copy
import os
import os.path as osp
from typing import List, Optional, Sequence, Union

import torch
from mmengine.config import Config
from mmseg.apis import inference_model, show_result_pyplot
from mmseg.apis import init_model as mmseg_init_model

from .console import init_reports_off_console

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def resolve_config(config: Union[str, os.PathLike, Config], cfg_options: Optional[dict] = None) -> Config:
    """Make a new Config from a file or a Config (never edited), with ``--cfg-options`` merged in.

    Args:
        config: a config file or Config.
        cfg_options: ``--cfg-options`` (a DictAction dict) to merge in.

    Returns:
        The new Config.
    """
    cfg = copy.deepcopy(config) if isinstance(config, Config) else Config.fromfile(os.fspath(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def init_model(config: Union[str, os.PathLike, Config], checkpoint: Optional[str] = None,
               device: str = 'cpu') -> torch.nn.Module:
    """Build a model as mmseg's ``init_model`` does, without mmengine's per-parameter initialisation report.

    The report (hundreds of lines) stays off the console only; a log file still gets it.

    Args:
        config: a config file or Config (mmseg's ``init_model`` edits a Config it is given).
        checkpoint: checkpoint to load, or None for the initialised weights.
        device: where the model runs, e.g. ``'cpu'`` or ``'cuda:0'``.

    Returns:
        The model in eval mode.
    """
    with init_reports_off_console():
        return mmseg_init_model(config, checkpoint, device=device)


def list_images(inputs: Sequence[str]) -> List[str]:
    """Expand folders into their image files (sorted); reject paths that do not exist.

    Args:
        inputs: image files and folders of images.

    Returns:
        The image files, the files of each folder sorted by name.

    Raises:
        FileNotFoundError: an input is neither a file nor a folder.
        ValueError: the inputs hold no image.
    """
    images: List[str] = []
    for path in inputs:
        if osp.isdir(path):
            images.extend(sorted(osp.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_SUFFIXES)))
        elif osp.isfile(path):
            images.append(path)
        else:
            raise FileNotFoundError(f'input {path!r} is neither an image file nor a folder')
    if not images:
        raise ValueError(f'no images ({", ".join(IMAGE_SUFFIXES)}) found in {list(inputs)}')
    return images


def predict_overlays(config: Union[str, os.PathLike, Config], checkpoint: str, inputs: Sequence[str], out_dir: str,
                     device: str = 'cpu', opacity: float = 0.5, cfg_options: Optional[dict] = None) -> List[str]:
    """Predict each image and write ``<out_dir>/<name>.png`` with the prediction painted over it.

    Args:
        config: a config file or Config (not edited).
        checkpoint: the trained model's checkpoint.
        inputs: image files and folders of images (``list_images``).
        out_dir: folder for the overlays, created if missing.
        device: where the model runs, e.g. ``'cpu'`` or ``'cuda:0'``.
        opacity: opacity of the painted prediction, 0 to 1.
        cfg_options: overrides of the config, as ``--cfg-options`` gives them.

    Returns:
        The overlay files written, in the order of the images.

    Raises:
        FileNotFoundError: an input is neither a file nor a folder.
        ValueError: the inputs hold no image.
    """
    images = list_images(inputs)
    model = init_model(resolve_config(config, cfg_options), checkpoint, device=device)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for image in images:
        result = inference_model(model, image)
        out_file = osp.join(out_dir, osp.splitext(osp.basename(image))[0] + '.png')
        show_result_pyplot(model, image, result, opacity=opacity, show=False, draw_gt=False, with_labels=False,
                           out_file=out_file)
        written.append(out_file)
    return written
