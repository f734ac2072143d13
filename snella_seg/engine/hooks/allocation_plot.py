"""A picture of where SNELLA's budget went: per-layer sparsity over time and the final budget per layer type."""
import re
from collections import defaultdict
from typing import Dict, List

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from ...snella.layer import DELTA_KEY  # noqa: E402


def layer_types(names: List[str]) -> Dict[str, str]:
    """Name the update type of each SNELLA update, the unit the plot colours by.

    Args:
        names: Update names such as ``'...attn.qkv.deltas.1'``.

    Returns:
        The type of each name: ``'...attn.qkv.deltas.1'`` -> ``'k'`` when qkv is split in three,
        ``'...mlp.fc1.deltas.0'`` -> ``'fc1'``.
    """
    split_modules = {n.rsplit(DELTA_KEY, 1)[0] for n in names if n.endswith(f'{DELTA_KEY}2')}
    types = {}
    for name in names:
        module, _, index = name.rpartition(DELTA_KEY)
        short = module.rsplit('.', 1)[-1]
        types[name] = 'qkv'[int(index)] if module in split_modules and short == 'qkv' else short
    return types


def block_index(name: str) -> int:
    """Return the transformer block a parameter name belongs to.

    Args:
        name: A parameter name with ``blocks.<i>.`` or ``layers.<i>.`` in it.

    Returns:
        The block index, or -1 for a name outside the blocks.
    """
    match = re.search(r'(?:blocks|layers)\.(\d+)\.', name)
    return int(match.group(1)) if match else -1


def plot_allocation(history: List[Dict], final: Dict, path: str) -> str:
    """Draw where the budget went: sparsity per update over steps, and kept entries per block and update type.

    Args:
        history: Allocation snapshots (``step``, ``sparsity`` by update name), oldest first; may be empty.
        final: The latest allocation: ``step``, ``sparsity`` and ``size`` (entries) by update name.
        path: File to write; PNG whatever its extension, so a temporary name can be written first.

    Returns:
        ``path``.
    """
    fig, (ax_time, ax_final) = plt.subplots(1, 2, figsize=(14, 5))
    names = list(final['sparsity'])
    types = layer_types(names)
    colours = {t: plt.cm.tab10(i % 10) for i, t in enumerate(sorted(set(types.values())))}
    if history:
        steps = [h['step'] for h in history]
        for name in names:
            ax_time.plot(steps, [h['sparsity'][name] for h in history], color=colours[types[name]],
                         alpha=0.5, linewidth=0.8)
        for t, c in colours.items():
            ax_time.plot([], [], color=c, label=t)
        ax_time.legend(title='update', fontsize=8)
    ax_time.set(xlabel='iteration', ylabel='sparsity', title='Per-layer sparsity over training', ylim=(0, 1))
    kept = defaultdict(lambda: defaultdict(int))
    for name in names:
        kept[types[name]][block_index(name)] += round(final['size'][name] * (1 - final['sparsity'][name]))
    blocks = sorted({block_index(n) for n in names})
    bottom = [0] * len(blocks)
    for t, c in colours.items():
        values = [kept[t][b] for b in blocks]
        ax_final.bar([str(b) for b in blocks], values, bottom=bottom, color=c, label=t)
        bottom = [a + v for a, v in zip(bottom, values)]
    ax_final.set(xlabel='block', ylabel='kept update entries',
                 title=f'Budget per block and type at step {final["step"]}')
    ax_final.legend(title='update', fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format='png')
    plt.close(fig)
    return path
