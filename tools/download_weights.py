"""Download the pretrained backbones the configs read, verified, into checkpoints/.

    python tools/download_weights.py vit-l sam-b          # into checkpoints/
    python tools/download_weights.py --list               # the catalogue: files, licences, hashes, URLs

An interrupted download resumes when the command is run again.
"""
import argparse
import sys

from snella_seg.apis.weights import DEFAULT_DIR, FetchError, catalogue_table, download_weights


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('names', nargs='*', help='backbones to download (see --list)')
    parser.add_argument('--dir', default=DEFAULT_DIR, help='where the files go (default: %(default)s)')
    parser.add_argument('--list', action='store_true', help='print the catalogue and exit')
    parser.add_argument('--mirror', help='a server keeping the publishers\' paths, used instead of their hosts')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    args = parser.parse_args(argv)
    if not args.list and not args.names:
        parser.error('name at least one backbone, or pass --list')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        print(catalogue_table())
        return 0
    try:
        paths = download_weights(args.names, args.dir, mirror=args.mirror, progress=not args.no_progress)
    except KeyError as error:
        print(f'download_weights: {error.args[0]}', file=sys.stderr)
        return 2
    except FetchError as error:
        print(f'download_weights: {error}', file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
