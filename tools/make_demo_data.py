"""Write a small synthetic segmentation data set in the ADE20K, Pascal Context 59 or custom-template layout.

Example: python tools/make_demo_data.py --layout ade20k --out data/demo   (prints the data root to use in configs)
`--layout custom` writes img_dir/ and ann_dir/ for configs/custom/ (8 classes, 255 = unlabelled), images of odd sizes.
"""
import argparse
from typing import List, Optional

from snella_seg.datasets.demo_data import make_ade20k_like, make_custom_like, make_pascal_context_like

MAKERS = {'ade20k': make_ade20k_like, 'pascal-context': make_pascal_context_like, 'custom': make_custom_like}


def main(argv: Optional[List[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--layout', choices=sorted(MAKERS), default='ade20k', help='folder layout to write')
    parser.add_argument('--out', default='data/demo', help='folder that receives the data set')
    parser.add_argument('--num-train', type=int, default=40, help='number of training images')
    parser.add_argument('--num-val', type=int, default=10, help='number of validation images')
    parser.add_argument('--size', type=int, default=128,
                        help='image side in pixels (custom layout: the typical side; every image differs)')
    parser.add_argument('--seed', type=int, default=0, help='random seed; the same seed gives the same data')
    args = parser.parse_args(argv)
    data_root = MAKERS[args.layout](args.out, num_train=args.num_train, num_val=args.num_val, size=args.size,
                                    seed=args.seed)
    print(data_root)
    return data_root


if __name__ == '__main__':
    main()
