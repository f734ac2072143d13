"""Kvasir-SEG polyp segmentation (the paper's own segmentation task) in mmseg: dataset and mask loading.

Kvasir-SEG ships ``images/<id>.jpg`` and ``masks/<id>.jpg``: masks are JPEG, so white (polyp) and black carry
compression noise and usually three channels. ``LoadBinaryMask`` thresholds them into 0 (background) / 1 (polyp).
"""
import mmcv
import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS, TRANSFORMS


@DATASETS.register_module()
class KvasirSEGDataset(BaseSegDataset):
    """Binary polyp segmentation; use ``ann_file`` split lists (one image id per line) for train/val.

    Args:
        img_suffix: Suffix of the image files.
        seg_map_suffix: Suffix of the mask files: Kvasir-SEG ships its masks as JPEG too.
        reduce_zero_label: mmseg's option; False, since 0 is the background class.
        **kwargs: ``BaseSegDataset``'s arguments (``data_root``, ``data_prefix``, ``ann_file``, ``pipeline``, ...).
    """

    METAINFO = dict(classes=('background', 'polyp'), palette=[[0, 0, 0], [220, 40, 60]])
    # Raw masks are 0..255 JPEG values until LoadBinaryMask thresholds them: folder checks skip label values.
    LABEL_VALUES_NEED_PIPELINE = True

    def __init__(self, img_suffix: str = '.jpg', seg_map_suffix: str = '.jpg', reduce_zero_label: bool = False,
                 **kwargs) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, **kwargs)


@TRANSFORMS.register_module()
class LoadBinaryMask(BaseTransform):
    """Read a (possibly JPEG, possibly 3-channel) mask as ``gt_seg_map`` with 1 where brightness > threshold.

    Args:
        threshold: Grey level (0-255) above which a pixel is polyp; the midpoint tolerates JPEG noise on both sides.
    """

    def __init__(self, threshold: int = 128) -> None:
        self.threshold = threshold

    def transform(self, results: dict) -> dict:
        """Load the mask at ``results['seg_map_path']``.

        Args:
            results: The pipeline's sample dict.

        Returns:
            ``results`` with ``gt_seg_map`` (uint8, 0 background, 1 polyp) added to it and to ``seg_fields``.

        Raises:
            FileNotFoundError: If the mask cannot be read.
        """
        mask = mmcv.imread(results['seg_map_path'], flag='grayscale')
        if mask is None:
            raise FileNotFoundError(f'cannot read mask {results["seg_map_path"]!r}')
        results['gt_seg_map'] = (mask > self.threshold).astype(np.uint8)
        results.setdefault('seg_fields', []).append('gt_seg_map')
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(threshold={self.threshold})'
