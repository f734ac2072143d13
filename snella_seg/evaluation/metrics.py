"""mmseg's IoU metric with a per-class table a user can read on data that holds few of the classes."""
from typing import Dict

import numpy as np
from mmengine.logging import MMLogger, print_log
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS
from prettytable import PrettyTable


@METRICS.register_module()
class PresentClassIoUMetric(IoUMetric):
    """``IoUMetric`` whose per-class table lists only the classes present in the ground truth or the prediction.

    A class absent from both has no IoU (NaN); mmseg leaves it out of every mean already (``nanmean``), so the
    returned metrics are exactly ``IoUMetric``'s. Only the printed table changes: a validation set that holds 10 of
    ADE20K's 150 classes shows 10 rows instead of 150, 140 of them ``nan``.
    """

    # Metric names stay unprefixed ('mIoU', as checkpoints' best-metric rules and logs expect them) without mmengine's
    # warning that no prefix was set: '' is not None, and adds nothing.
    default_prefix = ''

    def compute_metrics(self, results: list) -> Dict[str, float]:
        """Compute ``IoUMetric``'s metrics and log the per-class table of the classes present.

        Args:
            results: The per-batch areas ``IoUMetric.process`` collected.

        Returns:
            The metrics ``IoUMetric`` returns (``aAcc``, ``mIoU``, ...), in percent.
        """
        logger: MMLogger = MMLogger.get_current_instance()
        if self.format_only:
            return super().compute_metrics(results)
        area_intersect, area_union, area_pred, area_label = (sum(areas) for areas in zip(*results))
        ret_metrics = self.total_area_to_metrics(area_intersect, area_union, area_pred, area_label, self.metrics,
                                                 self.nan_to_num, self.beta)
        metrics = {}
        for key, value in ret_metrics.items():
            metrics[key if key == 'aAcc' else 'm' + key] = np.round(np.nanmean(value) * 100, 2)

        ret_metrics.pop('aAcc', None)
        present = np.flatnonzero(np.asarray(area_union) > 0)
        class_names = self.dataset_meta['classes']
        table = PrettyTable()
        table.add_column('Class', [class_names[index] for index in present])
        for key, value in ret_metrics.items():
            table.add_column(key, np.round(np.asarray(value)[present] * 100, 2))
        absent = len(class_names) - len(present)
        print_log(f'per class results ({len(present)} of {len(class_names)} classes occur in the ground truth or '
                  f'the prediction; the {absent} others have no score and count in no mean):' if absent else
                  'per class results:', logger)
        print_log('\n' + table.get_string(), logger=logger)
        return metrics
