"""Evaluate a checkpoint (mIoU): ``python tools/test.py CONFIG CHECKPOINT [--show-dir DIR] [--tta] [--out DIR]``."""
import argparse

from mmengine.config import DictAction

from snella_seg.apis import load_config, test
from snella_seg.apis.console import add_debug_argument, run_tool


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a SNELLA segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file (full or delta-only)')
    parser.add_argument('--work-dir', help='the dir to save evaluation logs')
    parser.add_argument('--out', help='the dir to save prediction label maps')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument('--show-dir', help='the dir to save prediction overlays')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation (multi-scale + flip)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, e.g. test_dataloader.batch_size=2')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    add_debug_argument(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    run_tool(lambda: _run(args), debug=args.debug)


def _run(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.work_dir, args.cfg_options, args.launcher)
    test(cfg, args.checkpoint, show_dir=args.show_dir, out=args.out, tta=args.tta, show=args.show,
         wait_time=args.wait_time)


if __name__ == '__main__':
    main()
