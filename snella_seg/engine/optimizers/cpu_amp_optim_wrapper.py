"""Mixed precision on CPU: mmengine's AmpOptimWrapper requires CUDA, so ``--amp`` on CPU uses bf16 autocast."""
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from mmseg.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """bf16 autocast around the forward pass; bf16 keeps fp32's exponent range, so no loss scaling is needed."""

    def __init__(self, dtype: str = 'bfloat16', **kwargs) -> None:
        super().__init__(**kwargs)
        self.cast_dtype = getattr(torch, dtype)

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        with super().optim_context(model), torch.autocast('cpu', dtype=self.cast_dtype):
            yield
