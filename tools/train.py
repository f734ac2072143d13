"""Train a segmentor: ``python tools/train.py CONFIG [--work-dir DIR] [--resume] [--amp] [--cfg-options k=v]``."""
import argparse

from mmengine.config import DictAction

from snella_seg.apis import load_config, train
from snella_seg.apis.console import add_debug_argument, run_tool


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a SNELLA segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--resume', action='store_true', default=False,
                        help='resume from the latest checkpoint in the work dir automatically')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='mixed precision: bf16 autocast on GPUs that support it, else fp16 + loss scaling '
                             '(stops a run that only skips steps); bf16 autocast on CPU')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, e.g. train_cfg.max_iters=100')
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
    train(cfg, resume=args.resume, amp=args.amp)


if __name__ == '__main__':
    main()
