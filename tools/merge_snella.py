"""Deploy a SNELLA checkpoint: ``python tools/merge_snella.py CONFIG CHECKPOINT OUT_DIR [--export-deltas]``.

Writes OUT_DIR/merged.pth + OUT_DIR/merged_config.py (ΔW folded into the weights: plain mmseg inference at the
frozen backbone's cost) and, with --export-deltas, OUT_DIR/snella_deltas.safetensors (only the updates).
"""
import argparse
import os.path as osp

from snella_seg.export import export_deltas, merge_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('out_dir')
    parser.add_argument('--export-deltas', action='store_true', help='also write the updates alone as safetensors')
    args = parser.parse_args()
    for path in merge_checkpoint(args.config, args.checkpoint, args.out_dir):
        print(path)
    if args.export_deltas:
        from mmseg.apis import init_model
        print(export_deltas(init_model(args.config, args.checkpoint, device='cpu'),
                            osp.join(args.out_dir, 'snella_deltas.safetensors')))


if __name__ == '__main__':
    main()
