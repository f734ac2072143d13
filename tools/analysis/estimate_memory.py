"""Peak training memory of an mmseg config on a GPU, estimated on any machine without computing anything.

The model runs its real training steps (forward, loss, backward, AdamW step) on fake tensors, which carry shapes,
dtypes and devices but no data, while a dispatch mode adds up the bytes of every live tensor storage the way
CUDA's caching allocator accounts ``torch.cuda.max_memory_allocated`` (each block rounded up to 512 bytes; a
storage counts once however many views share it; it is freed when its last reference dies). Parameters, buffers,
gradients, optimizer state, saved activations and backward temporaries are all counted. Not counted: the CUDA
context, cuBLAS/cuDNN workspaces and the allocator's cached-but-free blocks (``memory_reserved`` minus
``memory_allocated``): for mmseg's own configs, the GPU memory mmseg published is 1.24-1.48x this estimate
(docs/benchmark.md).

A step of ViT-L + UperNet at 512x512 costs seconds instead of the minutes a CPU would need to compute it. Fake
tensors and dispatch modes are PyTorch internals (``torch._subclasses``): requirements.txt pins the version.

Example: python tools/analysis/estimate_memory.py configs/snella_vit-l_ade20k.py configs/baselines/full_vit-l_ade20k.py
"""
import argparse
import copy
import json
import weakref
from contextlib import contextmanager, nullcontext
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union
from unittest import mock

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from dispatch_counter import kernels_as_on_a_gpu
from snella_seg.snella import BiLevelAllocator

AMP_WRAPPERS = ('AmpOptimWrapper', 'GuardedAmpOptimWrapper', 'CPUAmpOptimWrapper')
CUDA_BLOCK_BYTES = 512  # the caching allocator's smallest block: every allocation is rounded up to it
MB = 2 ** 20


class LiveTensorMemory(TorchDispatchMode):
    """Counts the bytes of live tensor storages created by every operator, and their peak.

    ``current`` and ``peak`` are in bytes, each storage rounded up to whole blocks.

    Args:
        block_bytes (int): the allocator's smallest block, which every storage is rounded up to.
    """

    def __init__(self, block_bytes: int = CUDA_BLOCK_BYTES) -> None:
        super().__init__()
        self.block_bytes = block_bytes
        self.current = 0
        self.peak = 0
        self._live = WeakIdKeyDictionary()

    def track(self, tensor: torch.Tensor) -> None:
        """Count ``tensor``'s storage from now until it is freed (once, however many tensors share it).

        Args:
            tensor (torch.Tensor): a tensor made outside the mode (a parameter, a buffer) whose storage counts too.
        """
        storage = tensor.untyped_storage()
        if storage in self._live:
            return
        size = -(-storage.nbytes() // self.block_bytes) * self.block_bytes
        self._live[storage] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, size)

    def _free(self, size: int) -> None:
        self.current -= size

    def resync(self) -> None:
        """Count every live storage at its size now: a storage resized in place (``UntypedStorage.resize_``, as the
        allocator releases its working buffer between steps) changes no operator's output, so ``track`` missed it."""
        for storage, size in list(self._live.items()):
            now = -(-storage.nbytes() // self.block_bytes) * self.block_bytes
            if now != size:
                self._live[storage] = now
                self.current += now - size
                self.peak = max(self.peak, self.current)
                weakref.finalize(storage, self._free, now - size)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            return _scalar_value(func, args[0])
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.track(value)
        return out


def _scalar_value(func, tensor: torch.Tensor):
    """Python scalars read from tensors. Real ones (configuration, such as a layer's sparsity buffer) keep their
    value. Fake ones have none and read as 1 (True for a finiteness check): in a training step they feed only
    arithmetic on scalars (AdamW's step count) and checks, never a tensor's shape, so the memory is the same."""
    if not isinstance(tensor, FakeTensor):
        with _disable_current_modes():
            return func(tensor)
    if tensor.constant is not None:
        return tensor.constant.item()
    if tensor.is_floating_point():
        return 1.0
    return True if tensor.dtype == torch.bool else 1


def _fake_model(model: nn.Module, mode: FakeTensorMode) -> nn.Module:
    """Every parameter and buffer replaced by a fake one, except scalar buffers that hold configuration."""
    def to_fake(tensor: torch.Tensor) -> torch.Tensor:
        keep = tensor.dim() == 0 and not isinstance(tensor, nn.Parameter) and not tensor.requires_grad
        return tensor if keep else mode.from_tensor(tensor)
    return model._apply(to_fake)


def random_segmentation_batch(batch: int, crop: Union[int, Tuple[int, int]], num_classes: int) -> Dict:
    """An mmseg training batch of random uint8 images and label maps.

    Args:
        batch (int): images in the batch.
        crop (int | Tuple[int, int]): their size, an int for a square or (height, width).
        num_classes (int): labels are drawn from ``range(num_classes)``.

    Returns:
        Dict: ``inputs`` (a list of 3 x H x W images) and ``data_samples`` (``SegDataSample``s), as
        ``model.train_step`` takes them.
    """
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    height, width = (crop, crop) if isinstance(crop, int) else crop
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, height, width), dtype=torch.uint8))
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, height, width)))
        shape = (height, width)
        sample.set_metainfo(dict(img_shape=shape, ori_shape=shape, pad_shape=shape))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


@contextmanager
def _without_accuracy_metric() -> Iterator[None]:
    """mmseg's decode heads log pixel accuracy by boolean indexing, whose output size depends on the labels'
    values; it runs without gradient on a few MB, so the estimate leaves it out."""
    import mmseg.models.decode_heads.decode_head as decode_head
    with mock.patch.object(decode_head, 'accuracy', lambda pred, target, **kwargs: pred.new_zeros(())):
        yield


def freeze_batchnorm_for_single_images(model: nn.Module, batch: int) -> None:
    """One image per process gives BatchNorm no statistics on the 1x1 pyramid-pooled maps (SyncBN would pool
    them across GPUs): use running statistics instead, at the same cost.

    Args:
        model (nn.Module): the segmentor, in training mode; its BatchNorm layers are put in eval mode if ``batch``
            is 1.
        batch (int): images per process.
    """
    if batch == 1:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _use_cpu_autocast(cfg, amp: bool = False) -> bool:
    """Replace a CUDA AMP optimizer wrapper (or add AMP) by the CPU bf16 one, which fake CPU tensors can follow."""
    wrapper = cfg.optim_wrapper
    if not amp and wrapper.get('type', 'OptimWrapper') not in AMP_WRAPPERS:
        return False
    for cuda_only in ('loss_scale', 'use_fsdp', 'max_consecutive_skips', 'min_loss_scale', 'device_type'):
        wrapper.pop(cuda_only, None)
    wrapper.update(type='CPUAmpOptimWrapper', dtype='bfloat16')
    return True


def _runs_allocator(cfg) -> bool:
    return any(h.get('type') == 'SNELLAAllocatorHook' for h in cfg.get('custom_hooks', []))


def estimate_training_memory(cfg, batch: Optional[int] = None, crop: Union[int, Tuple[int, int], None] = None,
                             steps: int = 2,
                             prepare: Optional[Callable[[nn.Module], None]] = None,
                             allocator: Optional[bool] = None, fake: bool = True, amp: bool = False) -> Dict:
    """Peak memory of ``steps`` training iterations of ``cfg.model`` with ``cfg.optim_wrapper``.

    Two steps are the default because the second is the first to hold optimizer state, gradients and activations
    at once.

    Args:
        cfg (mmengine.Config): an mmseg training config; it is not changed.
        batch (int, optional): images per GPU (default: the config's training batch size).
        crop (int | Tuple[int, int], optional): input size (default: the config's preprocessor size).
        steps (int): training iterations to follow.
        prepare (Callable[[nn.Module], None], optional): called with the (fake) model before the optimizer is
            built, e.g. to attach gradient masks.
        allocator (bool, optional): count the allocator's importance state (default: whether the config runs
            ``SNELLAAllocatorHook``).
        fake (bool): False computes for real under the same accounting: exact, slow at full size; it validates the
            fake run.
        amp (bool): follow 16-bit autocast, as an AMP optimizer wrapper in the config (``tools/train.py --amp``)
            also makes it: bfloat16 on the CPU's autocast op lists, which put matmuls, linears and convolutions in
            16 bits as CUDA's do.

    Returns:
        Dict: ``batch``, ``crop``, ``amp``, ``weights_mb``, ``optimizer_state_mb``, ``peak_mb`` (the estimate) and
        ``trainable_params``.
    """
    import snella_seg  # noqa: F401  (registers the components)
    from mmengine.model.utils import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    cfg = copy.deepcopy(cfg)  # the caller's config stays as it was
    batch = batch or cfg.train_dataloader.batch_size
    crop = (crop, crop) if isinstance(crop, int) else tuple(crop or cfg.model.data_preprocessor.size)
    cfg.model.data_preprocessor.size = crop
    amp = _use_cpu_autocast(cfg, amp)
    if allocator is None:
        allocator = _runs_allocator(cfg)
    torch.manual_seed(0)
    tracker = LiveTensorMemory()
    model = revert_sync_batchnorm(MODELS.build(cfg.model)).train()
    freeze_batchnorm_for_single_images(model, batch)
    data = random_segmentation_batch(batch, crop, cfg.model.decode_head.num_classes)
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else nullcontext()
    if fake:
        model = _fake_model(model, mode)
        data['inputs'] = [mode.from_tensor(image) for image in data['inputs']]
        for sample in data['data_samples']:
            sample.gt_sem_seg.data = mode.from_tensor(sample.gt_sem_seg.data)
    with mode, _without_accuracy_metric(), kernels_as_on_a_gpu():
        with tracker:
            for tensor in list(model.parameters()) + list(model.buffers()):
                tracker.track(tensor)
            weights = tracker.current
            if prepare is not None:
                prepare(model)
            wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
            if allocator:
                # its importance EMAs take the factors' size whatever the target ratio
                importance = BiLevelAllocator(model, target_ratio=0.7, total_steps=10 ** 6)

                def update_importance(*_) -> None:
                    importance.update_importance()
                    tracker.resync()
                wrapper.optimizer.register_step_pre_hook(update_importance)
            for _ in range(steps):
                model.train_step(data, wrapper)
            state = sum(t.numel() * t.element_size() for s in wrapper.optimizer.state.values()
                        for t in s.values() if torch.is_tensor(t))
    return {'batch': batch, 'crop': list(crop), 'amp': amp, 'weights_mb': weights / MB,
            'optimizer_state_mb': state / MB, 'peak_mb': tracker.peak / MB,
            'trainable_params': sum(p.numel() for p in model.parameters() if p.requires_grad)}


def publish(table: str, result, out: Optional[str]) -> None:
    """A tool's result: the table on stdout, everything as JSON at ``out`` when given.

    Args:
        table (str): what to print.
        result: what to write, anything ``json`` can.
        out (str, optional): the JSON file.
    """
    print(table)
    if out:
        with open(out, 'w') as f:
            json.dump(result, f, indent=1)


def format_estimates(rows: List[Dict]) -> str:
    """A markdown table, one row per config."""
    lines = ['| config | batch | crop | precision | trainable | optimizer state MB | estimated peak MB |',
             '|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f'| `{r["config"]}` | {r["batch"]} | {r["crop"][0]}x{r["crop"][1]} | '
                     f'{"amp" if r["amp"] else "fp32"} | {r["trainable_params"] / 1e6:.2f}M | '
                     f'{r["optimizer_state_mb"]:.0f} | {r["peak_mb"]:.0f} |')
    return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Estimate the peak GPU memory of training each config, on any machine (fake tensors)')
    parser.add_argument('configs', nargs='+', help='mmseg config files')
    parser.add_argument('--batch', type=int, help="images per GPU (default: the config's train batch size)")
    parser.add_argument('--crop', type=int, nargs=2, metavar=('H', 'W'),
                        help="input size (default: the config's data_preprocessor.size)")
    parser.add_argument('--steps', type=int, default=2, help='training iterations to follow (2 reach the peak)')
    parser.add_argument('--amp', action='store_true', help='16-bit mixed precision, as tools/train.py --amp')
    parser.add_argument('--out', help='write the estimates as JSON here')
    return parser


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    """Estimate each config given on the command line, print the table and write the JSON.

    Args:
        argv (List[str], optional): the arguments (default: ``sys.argv[1:]``).

    Returns:
        List[Dict]: one ``estimate_training_memory`` result per config, with its ``config`` path.
    """
    from mmengine.config import Config
    args = build_parser().parse_args(argv)
    rows = []
    for path in args.configs:
        estimate = estimate_training_memory(Config.fromfile(path), batch=args.batch, crop=args.crop,
                                            steps=args.steps, amp=args.amp)
        rows.append(dict(estimate, config=path))
    publish(format_estimates(rows), rows, args.out)
    return rows


if __name__ == '__main__':
    main()
