"""Deploy a SNELLA checkpoint, or one of any method whose update is a weight delta (PEFTBackbone: bitfit, ln_tune,
partial, ssf; adapters and prompts cannot be merged and are refused, saying why):
``python tools/merge_snella.py CONFIG CHECKPOINT OUT_DIR [--export-deltas] [--cfg-options k=v ...]``.

Writes OUT_DIR/merged.pth + OUT_DIR/merged_config.py (ΔW folded into the weights: plain mmseg inference at the
frozen backbone's cost) and, with --export-deltas, OUT_DIR/snella_deltas.safetensors (what training produced:
the SNELLA updates, neck and heads; with the frozen backbone's pretrained file it rebuilds the model).
"""
import argparse
import copy
import os.path as osp
import sys

from mmengine.config import DictAction

from snella_seg.apis.console import add_debug_argument, run_tool
from snella_seg.apis.inference import init_model, resolve_config
from snella_seg.deploy import NotMergeableError, export_deltas, merge_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('out_dir')
    parser.add_argument('--export-deltas', action='store_true',
                        help='also write the trained tensors alone (updates, neck, heads) as safetensors')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, e.g. model.backbone.backbone.pretrained=PATH')
    add_debug_argument(parser)
    args = parser.parse_args()
    run_tool(lambda: _run(args), debug=args.debug)


def _run(args: argparse.Namespace) -> None:
    cfg = resolve_config(args.config, args.cfg_options)
    try:
        paths = merge_checkpoint(cfg, args.checkpoint, args.out_dir)
    except NotMergeableError as refusal:
        print(f'merge_snella.py: nothing was written: {refusal}', file=sys.stderr)
        raise SystemExit(2) from None
    for path in paths:
        print(path)
    if args.export_deltas:
        print(export_deltas(init_model(copy.deepcopy(cfg), args.checkpoint, device='cpu'),
                            osp.join(args.out_dir, 'snella_deltas.safetensors')))


if __name__ == '__main__':
    main()
