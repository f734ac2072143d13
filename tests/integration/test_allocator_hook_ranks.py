"""Two CPU processes (gloo) check each other through SNELLAAllocatorHook's fingerprint: identical ranks pass, and one
rank whose parameters moved by a single float32 step is named by every rank."""
import json

import torch

from tests.helpers.allocator_hook import check_ranks_as_one_of_two


def test_a_rank_nudged_by_one_float_step_is_named_by_every_rank(tmp_path):
    torch.multiprocessing.spawn(check_ranks_as_one_of_two, args=(str(tmp_path / 'rendezvous'), str(tmp_path), 1),
                                nprocs=2)
    reports = [json.loads((tmp_path / f'rank{rank}.json').read_text()) for rank in (0, 1)]
    for report in reports:
        assert report['checks_in_training'] == 2  # identical ranks pass the first and the last check
        assert report['error'] is not None and 'SNELLA parameters diverged between ranks at iteration 5' in \
            report['error'] and 'ranks differing from rank 0: 1.' in report['error']
