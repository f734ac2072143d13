"""Download (or take the archives you have), verify, unpack and convert a data set to the layout its configs read.

    python tools/prepare_data.py ade20k                       # -> data/ade/ADEChallengeData2016
    python tools/prepare_data.py pascal-context-59            # -> data/VOCdevkit/VOC2010 (59 classes)
    python tools/prepare_data.py kvasir-seg --from-archive ~/kvasir-seg.zip   # -> data/kvasir-seg, 880/120 split

Pascal Context 59 needs VOC2010's VOCtrainval_03-May-2010.tar and PASCAL-Context's trainval.tar.gz (459-class
label maps, converted here to mmseg's 59 classes without the Detail API). Ends with the project's data check.
An interrupted download resumes when the command is run again.
"""
import argparse
import sys

from snella_seg.datasets import DatasetError
from snella_seg.datasets.prepare import RECIPES, DownloadInterrupted, FetchError, prepare_dataset


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('dataset', choices=sorted(RECIPES))
    parser.add_argument('--root', default='data', help='the configs\' data folder (default: %(default)s)')
    parser.add_argument('--from-archive', nargs='+', default=[], metavar='PATH',
                        help='archives you already have, under their publisher file names')
    parser.add_argument('--mirror', help='a server keeping the publishers\' paths, used instead of their hosts')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        counts = prepare_dataset(args.dataset, args.root, args.from_archive, mirror=args.mirror,
                                 progress=not args.no_progress)
    except DownloadInterrupted as error:
        print(f'prepare_data: {error}, or download the archive yourself and pass it with --from-archive',
              file=sys.stderr)
        return 1
    except (FetchError, DatasetError) as error:
        print(f'prepare_data: {error}', file=sys.stderr)
        return 1
    recipe = RECIPES[args.dataset]
    print(f'{args.dataset} ready in {args.root}/{recipe.root}: ' +
          ', '.join(f'{split} {count} samples' for split, count in counts.items()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
