"""Finished training runs side by side: mIoU against trainable parameters, the way PEFT papers present them.

Each work_dir is one run of ``tools/train.py``: the dumped config ``<config name>.py`` at its top and, for each
start (a resume adds one), a timestamped folder with ``vis_data/scalars.json`` and the text log. From them come the
method (from the config's backbone), the last validation's mIoU and mAcc, the backbone's trainable and total
parameters (the line the backbone logs at start-up; without one, the backbone is built on CPU from the dumped
config), the peak memory (the largest ``memory`` mmengine logged; CPU runs log none and show '-'), the mean seconds
per iteration and the iterations trained. A work_dir that is no finished run is listed with the reason.

Example: python tools/analysis/compare_runs.py work_dirs/* --out-md runs.md --out-png runs.png --out-json runs.json
"""
import argparse
import glob
import json
import os.path as osp
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

# The backbone's start-up line: SNELLABackbone's 'trainable 9,288 of 68,392 parameters' or PEFTBackbone's
# 'bitfit: 1,234 of 5,678 parameters trainable'.
SNELLA_COUNTS = re.compile(r'trainable ([\d,]+) of ([\d,]+) parameters')
METHOD_COUNTS = re.compile(r'([\d,]+) of ([\d,]+) parameters trainable')
COLUMNS = ('run', 'method', 'mIoU', 'mAcc', 'trainable', 'total', 'trainable %', 'peak memory (MB)', 's/iter',
           'iters')


def _scalars(folders: Sequence[str]) -> List[Dict[str, Any]]:
    lines = []
    for folder in folders:
        with open(osp.join(folder, 'vis_data', 'scalars.json')) as f:
            lines.extend(json.loads(line) for line in f if line.strip())
    return lines


def _logged_counts(folders: Sequence[str]) -> Optional[Tuple[int, int]]:
    """The backbone's trainable and total parameters, as its start-up line logged them (the last start's)."""
    counts = None
    for log in sorted(path for folder in folders for path in glob.glob(osp.join(folder, '*.log'))):
        with open(log, errors='replace') as f:
            for line in f:
                match = SNELLA_COUNTS.search(line) or METHOD_COUNTS.search(line)
                if match:
                    counts = tuple(int(group.replace(',', '')) for group in match.groups())
    return counts


def built_counts(config_path: str) -> Tuple[int, int]:
    """The backbone's trainable and total parameters, built on CPU from ``config_path`` (no weights load).

    Args:
        config_path: A dumped training config.

    Returns:
        Tuple[int, int]: Trainable and total parameters of ``model.backbone``.
    """
    import snella_seg  # noqa: F401  (registers the components)
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    backbone = MODELS.build(Config.fromfile(config_path).model.backbone)
    return (sum(p.numel() for p in backbone.parameters() if p.requires_grad),
            sum(p.numel() for p in backbone.parameters()))


def method_name(backbone: Dict[str, Any]) -> str:
    """The method a config's ``model.backbone`` trains, e.g. 'snella', 'lora (fused)', 'bitfit', 'peft LoraConfig'.

    Args:
        backbone: The config's ``model.backbone``.

    Returns:
        str: The method's short name.
    """
    kind = backbone.get('type')
    if kind == 'SNELLABackbone':
        kernel = (backbone.get('snella') or {}).get('kernel', 'snella')
        return {'snella': 'snella', 'linear': 'lora (fused)'}.get(kernel, f'snella ({kernel})')
    if kind == 'PEFTBackbone':
        method = backbone.get('method') or {}
        if method.get('type') == 'peft':
            return f"peft {(method.get('config') or {}).get('type', '?')}"
        return str(method.get('type', '?'))
    return 'frozen' if backbone.get('frozen') else 'full'


def _dumped_config(work_dir: str) -> Optional[str]:
    configs = glob.glob(osp.join(work_dir, '*.py'))
    return max(configs, key=osp.getmtime) if configs else None


def read_run(work_dir: str) -> Dict[str, Any]:
    """One run's row, or ``{'run', 'reason'}`` when ``work_dir`` is no finished run.

    Args:
        work_dir: A ``tools/train.py`` work_dir.

    Returns:
        Dict: ``run``, ``method``, ``mIoU``, ``mAcc``, ``trainable``, ``total``, ``peak_memory_mb`` (None on CPU),
        ``seconds_per_iter``, ``iters`` and ``work_dir``; or ``run`` and ``reason``.
    """
    run = osp.basename(osp.normpath(work_dir))
    if not osp.isdir(work_dir):
        return dict(run=run, reason='not a folder')
    config = _dumped_config(work_dir)
    if config is None:
        return dict(run=run, reason='no dumped config (*.py) at its top')
    folders = sorted(folder for folder in glob.glob(osp.join(work_dir, '*'))
                     if osp.isfile(osp.join(folder, 'vis_data', 'scalars.json')))
    if not folders:
        return dict(run=run, reason='no vis_data/scalars.json: the run never logged')
    try:
        scalars = _scalars(folders)
    except (OSError, ValueError) as error:
        return dict(run=run, reason=f'unreadable scalars.json ({error})')
    validations = [line for line in scalars if 'mIoU' in line]
    training = [line for line in scalars if 'iter' in line and 'time' in line]
    if not validations:
        return dict(run=run, reason='no validation (mIoU) logged: not finished')
    from mmengine.config import Config
    try:
        method = method_name(Config.fromfile(config).model.backbone)
        counts = _logged_counts(folders) or built_counts(config)
    except Exception as error:  # a config of another codebase or version: say so, list the others
        return dict(run=run, reason=f'config {osp.basename(config)} does not build ({type(error).__name__}: {error})')
    memory = [line['memory'] for line in training if 'memory' in line]
    times = [line['time'] for line in training]
    last = validations[-1]
    return dict(run=run, method=method, mIoU=last['mIoU'], mAcc=last.get('mAcc'), trainable=counts[0],
                total=counts[1], peak_memory_mb=max(memory) if memory else None,
                seconds_per_iter=sum(times) / len(times) if times else None,
                iters=max((line['iter'] for line in training), default=last.get('step')), work_dir=work_dir)


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return '-'
    if isinstance(value, float):
        return f'{value:.{digits}f}'
    if isinstance(value, int):
        return f'{value:,}'
    return str(value)


def format_table(rows: Sequence[Dict[str, Any]], skipped: Sequence[Dict[str, Any]] = ()) -> str:
    """The markdown table of finished runs (best mIoU first), then the skipped work_dirs with their reasons.

    Args:
        rows: Finished runs from ``read_run``, sorted.
        skipped: Runs with a ``reason``.

    Returns:
        str: Markdown.
    """
    lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
    for row in rows:
        cells = (row['run'], row['method'], _cell(row['mIoU']), _cell(row['mAcc']), _cell(row['trainable']),
                 _cell(row['total']), _cell(100 * row['trainable'] / max(row['total'], 1), 3),
                 _cell(row['peak_memory_mb'], 0), _cell(row['seconds_per_iter'], 3), _cell(row['iters']))
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines.extend(f'- skipped {row["run"]}: {row["reason"]}' for row in skipped)
    return '\n'.join(lines) + '\n'


def plot(rows: Sequence[Dict[str, Any]], path: str) -> None:
    """mIoU against trainable parameters (log scale), marker area proportional to peak memory where logged.

    Args:
        rows: Finished runs from ``read_run``.
        path: The PNG to write.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    memories = [row['peak_memory_mb'] for row in rows if row['peak_memory_mb']]
    largest = max(memories, default=1)
    fig, ax = plt.subplots(figsize=(7, 5))
    for row in rows:
        size = 40 + 400 * row['peak_memory_mb'] / largest if row['peak_memory_mb'] else 40
        ax.scatter(max(row['trainable'], 1), row['mIoU'], s=size, alpha=0.6)
        label = row['method'] if row['run'] in (row['method'], row['method'].replace('_', '-')) else \
            f"{row['method']} ({row['run']})"
        ax.annotate(label, (max(row['trainable'], 1), row['mIoU']), fontsize=8,
                    xytext=(4, 4), textcoords='offset points')
    ax.set_xscale('log')
    ax.set_xlabel('trainable backbone parameters')
    ax.set_ylabel('mIoU')
    ax.set_title('mIoU against trainable parameters' + (' (marker size: peak memory)' if memories else ''))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """The command line: work_dirs and where the table, plot and JSON go."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dirs', nargs='+', help='tools/train.py work_dirs, e.g. work_dirs/*')
    parser.add_argument('--out-md', help='write the markdown table here')
    parser.add_argument('--out-png', help='write the plot (mIoU against trainable parameters) here')
    parser.add_argument('--out-json', help='write the rows and the skipped work_dirs here')
    return parser


def main(argv: Optional[List[str]] = None) -> Dict[str, List[Dict[str, Any]]]:
    """Read every work_dir, print the table, write the outputs asked for.

    Args:
        argv: Command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        Dict: ``runs`` (finished, best mIoU first) and ``skipped`` (with reasons).
    """
    args = build_parser().parse_args(argv)
    read = [read_run(work_dir) for work_dir in args.work_dirs]
    rows = sorted((row for row in read if 'reason' not in row), key=lambda row: -row['mIoU'])
    result = dict(runs=rows, skipped=[row for row in read if 'reason' in row])
    table = format_table(rows, result['skipped'])
    sys.stdout.write(table)
    if args.out_md:
        with open(args.out_md, 'w') as f:
            f.write(table)
    if args.out_json:
        with open(args.out_json, 'w') as f:
            json.dump(result, f, indent=2)
    if args.out_png and rows:
        plot(rows, args.out_png)
    return result


if __name__ == '__main__':
    main()
