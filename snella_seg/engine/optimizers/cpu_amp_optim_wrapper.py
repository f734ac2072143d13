"""Mixed precision on CPU: mmengine's AmpOptimWrapper requires CUDA, so ``--amp`` on CPU uses bf16 autocast."""
from contextlib import contextmanager
from typing import Iterator

import torch
from mmengine.optim import OptimWrapper
from mmseg.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """bf16 autocast around the forward pass; bf16 keeps fp32's exponent range, so no loss scaling is needed.

    Args:
        dtype: Name of the autocast dtype in ``torch``.
        **kwargs: ``OptimWrapper``'s arguments (``optimizer``, ``clip_grad``, ...).
    """

    def __init__(self, dtype: str = 'bfloat16', **kwargs) -> None:
        super().__init__(**kwargs)
        self.cast_dtype = getattr(torch, dtype)

    @contextmanager
    def optim_context(self, model: torch.nn.Module) -> Iterator[None]:
        """Run the forward pass under ``OptimWrapper``'s context and CPU autocast.

        Args:
            model: The model being trained.

        Yields:
            Nothing: the body runs under autocast.
        """
        with super().optim_context(model), torch.autocast('cpu', dtype=self.cast_dtype):
            yield
