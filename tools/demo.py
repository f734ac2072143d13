"""Predict images with a trained model:
``python tools/demo.py CONFIG CHECKPOINT IMAGE_OR_DIR... --out-dir DIR [--cfg-options k=v ...]``.
"""
import argparse

from mmengine.config import DictAction

from snella_seg.apis import predict_overlays
from snella_seg.apis.console import add_debug_argument, run_tool


def main() -> None:
    parser = argparse.ArgumentParser(description='Write segmentation overlays for image files or folders')
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('inputs', nargs='+', help='image files and/or folders of images')
    parser.add_argument('--out-dir', default='demo_overlays')
    parser.add_argument('--device', default='cpu', help='e.g. cpu or cuda:0')
    parser.add_argument('--opacity', type=float, default=0.5)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, e.g. model.backbone.backbone.pretrained=PATH')
    add_debug_argument(parser)
    args = parser.parse_args()
    run_tool(lambda: _run(args), debug=args.debug)


def _run(args: argparse.Namespace) -> None:
    for path in predict_overlays(args.config, args.checkpoint, args.inputs, args.out_dir, args.device, args.opacity,
                                 cfg_options=args.cfg_options):
        print(path)


if __name__ == '__main__':
    main()
