"""Compile SNELLA's fused Triton kernels for a GPU on a machine without one, and read what each costs the GPU.

The fused path (``snella_seg/snella/fused_kernels.py``) compiles its kernels at their first launch, on the GPU, so
a Triton version that cannot build them would fail the first minutes of a lent GPU. This tool builds them ahead on
any machine: a stand-in CUDA driver reports the target architecture, and every launch a fused layer's training step
makes becomes Triton's ``warmup``, which compiles to a cubin (with the ``ptxas`` that Triton ships) without
launching. The steps cover every kernel variant the layer uses: SNELLA's and SNELL's kernels, one update and the
q, k and v of a projection, masked and unmasked, both masks. ``cuobjdump --dump-resource-usage`` (also shipped
with Triton) then reads each kernel's registers per thread, spill stack and shared memory: a kernel at 255
registers with a stack spills, and few of its programs fit on an SM at once.

The stand-in goes through Triton 3's driver configuration (``triton.runtime.driver.set_active``); run the tool in
its own process, as its kernels keep the stand-in's target.

Usage:
    python tools/analysis/compile_fused_kernels.py [--arch 90] [--rank 32] [--out kernels.json]
"""
import argparse
import contextlib
import json
import os
import os.path as osp
import re
import subprocess
import tempfile
import time
from typing import Dict, Iterator, List, Optional
from unittest import mock

import torch

# The layer steps that reach every kernel variant: (kernel, split, sparsity, mask).
VARIANTS = tuple((kernel, split, sparsity, mask) for kernel in ('snella', 'snell') for split in (1, 3)
                 for sparsity in (0.0, 0.7) for mask in ('magnitude', 'binary'))
# Feature counts divisible by 16, as every supported backbone's are: Triton specialises integer arguments on that.
IN_FEATURES, OUT_FEATURES, TOKENS = 64, 96, 4
RESOURCES = ('REG', 'STACK', 'SHARED', 'LOCAL')


class _StandInCudaDriver:
    """What Triton's JIT asks of the active driver before it compiles: the target, a device and a stream."""

    def __init__(self, capability: int, warp_size: int = 32) -> None:
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget('cuda', capability, warp_size)

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: Optional[int] = None) -> int:
        return 0

    def is_active(self) -> bool:
        return True


@contextlib.contextmanager
def cuda_driver_stand_in(capability: int) -> Iterator[None]:
    """Make Triton compile for CUDA compute capability ``capability`` (e.g. 90: H100) without a GPU.

    Args:
        capability: The compute capability as Triton writes it (major * 10 + minor).

    Yields:
        None: inside the ``with`` block the stand-in is Triton's active driver.
    """
    from triton.runtime import driver
    enclosing = driver._active  # None until a driver was used: restored as it was, without creating one
    driver.set_active(_StandInCudaDriver(capability))
    try:
        yield
    finally:
        driver._active = enclosing


def resource_usage(cubin: bytes) -> Optional[Dict[str, int]]:
    """Registers per thread, stack (spills), shared and local memory of a cubin's kernel, from Triton's cuobjdump.

    Args:
        cubin: A compiled kernel's cubin.

    Returns:
        ``{'REG': ..., 'STACK': ..., 'SHARED': ..., 'LOCAL': ...}``, or None where Triton ships no cuobjdump.
    """
    import triton
    tool = osp.join(osp.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'cuobjdump')
    if not osp.isfile(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix='.cubin') as f:
        f.write(cubin)
        f.flush()
        listing = subprocess.run([tool, '--dump-resource-usage', f.name], capture_output=True, text=True,
                                 check=True).stdout
    return {name: int(re.search(rf'\b{name}:(\d+)', listing).group(1)) for name in RESOURCES}


def compile_fused_kernels(capability: int = 90, rank: int = 32, variants=VARIANTS) -> List[Dict]:
    """Compile every kernel a fused layer's training step launches, for ``capability``, at ``rank``.

    Args:
        capability: CUDA compute capability (major * 10 + minor).
        rank: The updates' rank (a compile-time constant of the kernels).
        variants: The layer steps to run, as (kernel, split, sparsity, mask).

    Returns:
        One row per distinct compiled kernel: its name, the variants that launch it, compile seconds, cubin bytes
        and ``resource_usage``.
    """
    from snella_seg.snella import SNELLALinear, fused_kernels
    compiled: Dict[str, Dict] = {}
    current: List[str] = []

    def compile_instead(kernel, grid, *args, **meta) -> None:
        start = time.perf_counter()
        binary = kernel.warmup(*args, grid=grid, **meta)
        row = compiled.setdefault(binary.hash, {'kernel': kernel.fn.__name__, 'variants': [],
                                                'compile_seconds': time.perf_counter() - start,
                                                'cubin_bytes': len(binary.asm['cubin']),
                                                'resources': resource_usage(binary.asm['cubin'])})
        if current[0] not in row['variants']:
            row['variants'].append(current[0])

    torch.manual_seed(0)
    with cuda_driver_stand_in(capability), fused_kernels.fused_kernels_forced(), \
            mock.patch.object(fused_kernels, '_launch', compile_instead):
        for kernel, split, sparsity, mask in variants:
            current[:] = [f'{kernel} split={split} sparsity={sparsity} {mask}']
            layer = SNELLALinear(torch.nn.Linear(IN_FEATURES, OUT_FEATURES * split), rank=rank, kernel=kernel,
                                 sparsity=sparsity, mask=mask, split=split)
            layer(torch.randn(TOKENS, IN_FEATURES, requires_grad=True)).sum().backward()
    return list(compiled.values())


def format_table(rows: List[Dict]) -> str:
    """A markdown table of ``compile_fused_kernels``' rows."""
    lines = ['| kernel | registers | stack (spills) bytes | shared bytes | compile s | launched by |',
             '|---|---|---|---|---|---|']
    for row in rows:
        usage = row['resources'] or {}
        lines.append(f'| {row["kernel"]} | {usage.get("REG", "?")} | {usage.get("STACK", "?")} | '
                     f'{usage.get("SHARED", "?")} | {row["compile_seconds"]:.1f} | {"; ".join(row["variants"])} |')
    return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', type=int, default=90, help='CUDA compute capability, e.g. 90 (H100), 80 (A100)')
    parser.add_argument('--rank', type=int, default=32, help="the updates' rank (the shipped configs' is 32)")
    parser.add_argument('--out', help='write the rows as JSON here')
    return parser


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    args = build_parser().parse_args(argv)
    try:
        import triton
    except ImportError:
        raise SystemExit('compile_fused_kernels: triton does not import here; install the triton that torch names')
    rows = compile_fused_kernels(args.arch, args.rank)
    print(f'Triton {triton.__version__}, torch {torch.__version__}, sm_{args.arch}, rank {args.rank}: '
          f'{len(rows)} kernels compiled')
    print(format_table(rows))
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump({'triton': triton.__version__, 'torch': torch.__version__, 'arch': args.arch,
                       'rank': args.rank, 'kernels': rows}, f, indent=1)
    return rows


if __name__ == '__main__':
    main()
