"""The SNELLA-adapted Linear layer.

``y = base(x) + x @ ΔW.T`` where ΔW is a sparsified kernel matrix built from low-rank factors. By default the
layer is computed as ONE linear with ``W0 + ΔW`` inside a custom autograd function that stores only the input and
the factors and rebuilds the dense ΔW in backward: the dense matrices never outlive the layer's own computation,
which keeps training memory at LoRA's level although ΔW is full-rank.
"""
import math
import struct
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .fused_kernels import (factor_batch, fused_kernels_take, fused_layer_factor_grads, fused_layer_weight,
                            fused_mask_name)
from .kernels import (Kernel, full_precision_matmuls, get_kernel, masked_distance_kernel, masked_kernel_matrix,
                      selection_threshold)
from .masks import get_mask

# Every state-dict key of SNELLA's own tensors (factors, kernel scalars, sparsity) has this part: SNELLALinear.deltas
DELTA_KEY = '.deltas.'


def check_fraction(name: str, value: float) -> None:
    """Sparsity-like values must lie in [0, 1): 1 would remove the whole update.

    Args:
        name: The option's name, for the error message.
        value: Its value.

    Raises:
        ValueError: ``value`` lies outside [0, 1).
    """
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f'{name} must be in [0, 1), got {value}; it is the fraction of zeroed update entries')


def check_rank(rank: int, kernel: Kernel) -> None:
    """The rank is split evenly over the kernel's factor groups.

    Args:
        rank: The rank asked for.
        kernel: The kernel's registry entry.

    Raises:
        ValueError: ``rank`` is not a positive integer divisible by the kernel's groups.
    """
    if isinstance(rank, bool) or int(rank) != rank or rank < 1 or rank % kernel.groups:
        raise ValueError(f'rank must be a positive integer divisible by {kernel.groups} for kernel {kernel.name!r}, '
                         f'got {rank}')


def stored_value(value: float, dtype: torch.dtype) -> float:
    """``float(torch.tensor(value, dtype=dtype))`` without a tensor.

    The host copy of a sparsity must be the value its buffer holds (a float32 0.7 is 0.699999988...), or a run would
    select differently from one that reads the buffer back (a resumed run, tools/test.py on a checkpoint).

    Args:
        value: The value written.
        dtype: The buffer's dtype.

    Returns:
        The value the buffer then holds, as a Python float.
    """
    value = float(value)
    if dtype == torch.float64:
        return value
    single = struct.unpack('<f', struct.pack('<f', value))[0]  # torch narrows a Python float through float32
    if dtype == torch.float16:
        return struct.unpack('<e', struct.pack('<e', single))[0]
    if dtype == torch.bfloat16:  # round float32's bits to the top 16, to nearest even, as torch does
        bits = struct.unpack('<I', struct.pack('<f', single))[0]
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return struct.unpack('<f', struct.pack('<I', bits))[0]
    return single


class SparseKernelDelta(nn.Module):
    """One sparse kernelized update ΔW (out x in): the factors, the kernel scalars and the layer's sparsity.

    It is the unit of the allocator's budget: a fused qkv projection holds three of them. What depends on the
    kernel (factor groups, scalars, initialisation, masking) comes from its registry entry (``kernels.Kernel``), and
    what depends on the mask from the mask's (``masks.Mask``).

    Args:
        in_features: Columns of ΔW (the Linear's input features).
        out_features: Rows of ΔW.
        rank: Rank of the factors; see ``SNELLAConfig``.
        kernel: A registered kernel's name; see ``SNELLAConfig``.
        sparsity: Initial fraction of zeroed entries; see ``SNELLAConfig``.
        mask: A registered mask's name; see ``SNELLAConfig``.

    Raises:
        ValueError: An unknown kernel or mask, a rank the kernel cannot split, a sparsity outside [0, 1), or kernel
            scalars named like the update's own attributes.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, kernel: str = 'snella',
                 sparsity: float = 0.0, mask: str = 'magnitude') -> None:
        super().__init__()
        spec = get_kernel(kernel)
        mask_spec = get_mask(mask)
        check_rank(rank, spec)
        check_fraction('sparsity', sparsity)
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.kernel, self.mask, self.spec, self.mask_spec = kernel, mask, spec, mask_spec
        groups = spec.groups
        self.in_factors = nn.Parameter(torch.empty(groups, in_features, rank // groups))
        self.out_factors = nn.Parameter(torch.empty(groups, out_features, rank // groups))
        # A buffer, not a Python attribute: saved with the model, restored on resume, copied to EMA models.
        self.register_buffer('sparsity', torch.tensor(float(sparsity)))
        self._sparsity_read: Tuple[Optional[torch.Tensor], int, float] = (None, -1, 0.0)
        self.set_sparsity(float(sparsity))
        taken = [name for name in spec.scalars if hasattr(self, name)]
        if taken:
            raise ValueError(f'kernel {kernel!r} names scalars {taken}, which SparseKernelDelta uses itself: rename '
                             'them in its Kernel entry')
        for name, initial in spec.scalars.items():
            self.register_parameter(name, nn.Parameter(torch.tensor(float(initial))))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform factors (output factors at zero where the kernel says so) and the scalars' initial values."""
        nn.init.kaiming_uniform_(self.in_factors, a=math.sqrt(5))
        if self.spec.zero_init_output:
            nn.init.zeros_(self.out_factors)  # LoRA starts from ΔW = 0
        else:
            nn.init.kaiming_uniform_(self.out_factors, a=math.sqrt(5))
        with torch.no_grad():
            for name, initial in self.spec.scalars.items():
                getattr(self, name).fill_(float(initial))

    def set_sparsity(self, value: float) -> None:
        """Set the sparsity and remember it on the host, so forward and backward never read the device buffer.

        Args:
            value: The new sparsity, in [0, 1).
        """
        with torch.no_grad():
            self.sparsity.fill_(value)
        self._sparsity_read = (self.sparsity, self.sparsity._version, stored_value(value, self.sparsity.dtype))

    @property
    def sparsity_value(self) -> float:
        """The sparsity as a Python float.

        Reading a device buffer drains the GPU's stream, so the value set by ``set_sparsity`` is reused for as long
        as the buffer is that same tensor, unwritten since; only a write from elsewhere (``load_state_dict``,
        ``.to()``, an EMA copy through ``copy_``) costs one read.
        """
        tensor, version, value = self._sparsity_read
        if tensor is not self.sparsity or version != self.sparsity._version:
            value = float(self.sparsity)
            self._sparsity_read = (self.sparsity, self.sparsity._version, value)
        return value

    @property
    def numel(self) -> int:
        """Entries of ΔW: the budget unit of the allocator."""
        return self.in_features * self.out_features

    @property
    def is_sparse(self) -> bool:
        """Whether the mask applies.

        Kernels marked ``always_masked`` (SNELLA: at s = 0 it still scales by |M|) apply their mask always; the
        others only when s > 0.
        """
        return self.spec.always_masked or self.sparsity_value > 0

    @property
    def is_low_rank(self) -> bool:
        """ΔW = A B^T exactly (a bilinear kernel, unmasked): ``low_rank_forward`` may replace the dense ΔW."""
        return self.spec.bilinear and not self.is_sparse

    def factor_parameters(self) -> List[nn.Parameter]:
        """All trainable tensors of this update.

        Returns:
            Input factors, output factors and the kernel's scalars, in the order ``compute_delta`` takes them.
        """
        return [self.in_factors, self.out_factors, *(getattr(self, n) for n in self.spec.scalars)]

    def compute_delta(self, *factors: torch.Tensor,
                      threshold: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """ΔW from the given factor tensors, in full-precision float32 whatever the autocast and TF32 settings.

        Args:
            *factors: Tensors in the order of ``factor_parameters`` (the parameters themselves, or leaves that stand
                for them).
            threshold: The threshold an earlier call with the same factors returned: rebuilds the same ΔW without
                selecting again.

        Returns:
            ΔW (out x in) and the selection threshold it used (None where nothing was selected).
        """
        with torch.autocast(factors[0].device.type, enabled=False), full_precision_matmuls():
            # the layer's own selection_threshold: tests count selections through it
            matrix, threshold = masked_kernel_matrix(self.spec, [f.float() for f in factors],
                                                     self.sparsity_value if self.is_sparse else None, self.mask_spec,
                                                     threshold, select=selection_threshold)
        return matrix.T, threshold

    def delta_weight(self) -> torch.Tensor:
        """The effective sparse ΔW that forward adds to the base weight.

        Returns:
            ΔW (out x in), float32, under autograd.
        """
        return self.compute_delta(*self.factor_parameters())[0]

    def low_rank_forward(self, x: torch.Tensor) -> torch.Tensor:
        """LoRA's cheap path ``(x A) B^T``, valid only where ``is_low_rank``.

        Args:
            x: Input of shape ``(..., in_features)``.

        Returns:
            ``x @ ΔW.T`` of shape ``(..., out_features)``, in ``x``'s dtype.
        """
        return (x @ self.in_factors[0].to(x.dtype)) @ self.out_factors[0].to(x.dtype).T

    def extra_repr(self) -> str:
        """Return sizes, kernel, mask and sparsity, for ``print(model)``."""
        return (f'in={self.in_features}, out={self.out_features}, rank={self.rank}, kernel={self.kernel}, '
                f'mask={self.mask}, sparsity={self.sparsity_value:.4f}')


@torch.no_grad()
def set_sparsities(updates: Sequence[SparseKernelDelta], values: Sequence[float]) -> None:
    """``set_sparsity`` for many updates with one batched copy per device.

    A reallocation sets every update's sparsity (144 at ViT-L), at every iteration of the final warm-up.

    Args:
        updates: The updates.
        values: Their new sparsities, in the same order.

    Raises:
        ValueError: The two differ in length.
    """
    if len(updates) != len(values):
        raise ValueError(f'got {len(values)} sparsities for {len(updates)} updates')
    by_device: dict = {}
    for update, value in zip(updates, values):
        by_device.setdefault((update.sparsity.device, update.sparsity.dtype), []).append((update, float(value)))
    for (device, dtype), pairs in by_device.items():
        source = torch.tensor([value for _, value in pairs], dtype=dtype, device=device)
        torch._foreach_copy_([update.sparsity for update, _ in pairs], list(source.unbind()))
        for update, value in pairs:
            update._sparsity_read = (update.sparsity, update.sparsity._version, stored_value(value, dtype))


def _stacked_delta(deltas: Sequence[SparseKernelDelta], factors: Sequence[torch.Tensor],
                   thresholds: Optional[Sequence[Optional[torch.Tensor]]] = None) -> Tuple[torch.Tensor, list]:
    """Return the row-wise concatenation of the deltas' ΔW, and the selection thresholds used.

    ``factors`` are all deltas' tensors, in order; ``thresholds`` (one per delta, None: select) come from an
    earlier call with the same factors.
    """
    blocks, used, at = [], [], 0
    for index, d in enumerate(deltas):
        count = len(d.factor_parameters())
        block, threshold = d.compute_delta(*factors[at:at + count],
                                           threshold=thresholds[index] if thresholds else None)
        blocks.append(block)
        used.append(threshold)
        at += count
    return (blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=0)), used


def _plus_base_weight(delta: torch.Tensor, weight: Optional[torch.Tensor], concatenated: bool) -> torch.Tensor:
    """Return ``W0 + ΔW`` from ``_stacked_delta``'s ΔW, in ΔW's own buffer where it can be.

    That is where ΔW is the concatenation of split updates (a new tensor no backward reads): one dense matrix less
    while backward rebuilds ΔW. ``delta`` then holds W0 + ΔW; autograd only needs it as the end of its graph. A single
    update's ΔW is a view (of M.T), and writing a view in place would make autograd replace its backward by a copy of
    the whole matrix.
    """
    detached = delta.detach()
    if weight is None:
        return detached
    if concatenated and delta.dtype == weight.dtype:
        return detached.add_(weight)  # delta + W0 and W0 + delta are the same numbers
    return weight + detached.to(weight.dtype)


def _fused_mask(deltas: Sequence[SparseKernelDelta], weight: Optional[torch.Tensor],
                factors: Sequence[torch.Tensor]) -> Optional[str]:
    """Return the mask's name when the fused kernels build the layer's weight (``base + ΔW``) in one launch, or None.

    That is when the fused kernels take the factors (``fused_kernels_take``: float32, on a GPU) for every update's
    kernel (SNELL's and SNELLA's) and mask (``fused_mask_name``), the updates share kernel, mask and whether they are
    masked, the base weight is float32 and the mask reuses the forward's threshold.
    """
    first = deltas[0]
    mask = fused_mask_name(first.mask_spec)
    if mask is None or first.spec.fused is not masked_distance_kernel or not first.mask_spec.reuse_threshold:
        return None
    if weight is not None and (weight.dtype != torch.float32 or not weight.is_contiguous()):
        return None
    if not fused_kernels_take(factors):
        return None
    sparse = first.is_sparse
    if any(d.spec is not first.spec or d.mask_spec is not first.mask_spec or d.is_sparse != sparse for d in deltas):
        return None
    return mask


def _in_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Return ``tensor.to(dtype)``, without the host call where it already has that dtype (the per-step path)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def _recomputed_inputs(ctx, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Return the linear's input and the leaf it was recomputed from (None without an absorbed activation).

    An absorbed activation is recomputed under the forward's autocast state.
    """
    if ctx.activation is None:
        return x, None
    with torch.enable_grad():
        source = x.detach().requires_grad_(ctx.needs_input_grad[0])
        with torch.autocast(**ctx.autocast):
            return ctx.activation(source), source


def _fused_factor_grads(ctx, weight: Optional[torch.Tensor],
                        x_t_g: torch.Tensor) -> Tuple[list, Optional[torch.Tensor]]:
    """Return the factors' gradients from X^T G, and ``W0 + ΔW`` where the input's gradient needs it (else None).

    Two kernel launches for the gradients; one for the rebuild, with the forward's thresholds.
    """
    batch, sparsities, mask, thresholds = ctx.fused
    grad_factors = fused_layer_factor_grads(batch, sparsities, mask, thresholds, x_t_g)
    full = None
    if ctx.needs_input_grad[0]:
        full, _, _ = fused_layer_weight(batch, sparsities, mask, weight, thresholds, reselect=False)
    return grad_factors, full


def _eager_factor_grads(ctx, factors: Sequence[torch.Tensor], weight: Optional[torch.Tensor],
                        x_t_g: torch.Tensor) -> Tuple[tuple, torch.Tensor]:
    """Return the factors' gradients through autograd of the rebuilt ΔW (the forward's thresholds), and ``W0 + ΔW``."""
    with torch.enable_grad():
        leaves = [f.detach().requires_grad_(True) for f in factors]
        delta, _ = _stacked_delta(ctx.deltas, leaves, ctx.thresholds)
    full = _plus_base_weight(delta, weight, len(ctx.deltas) > 1)
    return torch.autograd.grad(delta, leaves, x_t_g.T.to(delta.dtype), allow_unused=True), full


class _FusedDeltaLinear(torch.autograd.Function):
    """``F.linear(act(x), W0 + ΔW, b)`` that saves only x and the factors.

    ΔW is rebuilt in backward, reusing the forward pass's selection thresholds (same factors, same matrix, same mask)
    instead of selecting again, unless the mask's entry says to select again (``Mask.reuse_threshold``). An absorbed
    activation ``act`` (None: identity) is recomputed in backward under the forward's autocast state, so its output
    is never stored.

    Where the fused kernels build the layer's weight (``_fused_mask``), one kernel writes ``W0 + ΔW`` of all the
    layer's updates (the q, k and v of a projection together), backward hands X^T G straight to the factors'
    gradient kernels and rebuilds ``W0 + ΔW`` for the input's gradient alone (fused_kernels.py counts the launches).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, activation, deltas, *factors):
        # autograd.Function runs forward with gradients off: nothing here records a graph
        ctx.deltas, ctx.activation = deltas, activation
        if activation is not None:  # backward recomputes it under the same autocast state
            device = x.device.type
            ctx.autocast = dict(device_type=device, enabled=torch.is_autocast_enabled(device),
                                dtype=torch.get_autocast_dtype(device))
        mask = _fused_mask(deltas, weight, factors)
        ctx.fused = None
        if mask is not None:
            per_update = len(factors) // len(deltas)
            batch = factor_batch([factors[at:at + per_update] for at in range(0, len(factors), per_update)]
                                 if len(deltas) > 1 else [factors])
            sparsities = [d.sparsity_value if d.is_sparse else None for d in deltas]
            full, thresholds, _ = fused_layer_weight(batch, sparsities, mask, weight)
            ctx.fused = (batch, sparsities, mask, thresholds)
        else:
            delta, thresholds = _stacked_delta(deltas, factors)
            # what backward passes back in: the forward's threshold, or None where the mask selects again
            ctx.thresholds = [t if d.mask_spec.reuse_threshold else None for d, t in zip(deltas, thresholds)]
            full = _plus_base_weight(delta, weight, len(ctx.deltas) > 1)
        inputs = x if activation is None else activation(x)
        out = F.linear(inputs, _in_dtype(full, x.dtype), bias)
        ctx.save_for_backward(x, weight, *factors)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, *factors = ctx.saved_tensors
        inputs, source = _recomputed_inputs(ctx, x)
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
        # X^T G (in x out) = dL/dM, the transpose of the gradient of W0 + ΔW: the layout the kernels' elementwise work
        # reads without a copy
        x_t_g = _in_dtype(inputs.detach().reshape(-1, inputs.shape[-1]), grad_out.dtype).T @ flat_grad
        if ctx.fused is not None:
            grad_factors, full = _fused_factor_grads(ctx, weight, x_t_g)
        else:
            grad_factors, full = _eager_factor_grads(ctx, factors, weight, x_t_g)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = _in_dtype(grad_out @ _in_dtype(full, grad_out.dtype), inputs.dtype)
            if source is not None:
                grad_x, = torch.autograd.grad(inputs, source, grad_x)
        grad_weight = x_t_g.T.to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_bias = flat_grad.sum(0).to(grad_out.dtype) if ctx.needs_input_grad[2] else None
        return (grad_x, grad_weight, grad_bias, None, None, *grad_factors)


def drop_path(x: torch.Tensor, prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth on the update branch: drop the whole branch per sample.

    Args:
        x: The branch's output, batch first.
        prob: Probability of dropping a sample's branch.
        training: Only training drops; otherwise ``x`` is returned as it is.

    Returns:
        ``x`` with dropped samples zeroed and the others scaled by ``1 / (1 - prob)``.
    """
    if prob == 0.0 or not training:
        return x
    keep = 1.0 - prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class SNELLALinear(nn.Module):
    """A frozen ``nn.Linear`` plus one or more parallel sparse kernelized updates: ``y = base(x) + x @ ΔW.T``.

    Call flow of ``forward`` (all four give the same values; they differ in memory and speed):

    1. Low-rank path: every update is a bilinear kernel (LoRA's ``linear``) and unmasked, so
       ``base(x) + drop_path((dropout(x) A) B^T)``; no dense ΔW exists.
    2. Separate branch: training with ``dropout`` or ``drop_path`` > 0, which act on the update alone, so
       ``base(x) + drop_path(dropout(x) @ ΔW.T)`` with the branch itself computed as in 3 or 4 (without W0).
    3. Fused checkpointed path (``checkpoint=True``, the default): ONE ``F.linear(act(x), W0 + ΔW, b)`` inside
       ``_FusedDeltaLinear``, which saves only x and the factors and rebuilds ΔW (and an absorbed activation
       ``act``) in backward.
    4. Plain dense path (``checkpoint=False``): the same linear under ordinary autograd, which stores ΔW.

    In eval mode without gradient (validation, sliding-window inference), paths 3 and 4 build ``W0 + ΔW`` once and
    reuse it for every forward until a factor, the sparsity or the base weight changes (``_eval_weight``), with
    outputs identical to the uncached path and to ``merge()``. The cache holds one dense matrix per adapted Linear,
    the memory of a merged model; it is dropped at every ``train()``/``eval()`` call and every forward with
    gradient, so training never keeps it, and ``state_dict``, copies (EMA models) and pickles leave it out.

    ``absorbed`` (set by ``absorb_activation``) is a frozen module whose work this layer does on its input: the
    fused layer then stores that module's input only and recomputes it in backward, e.g. an MLP's hidden activation
    is stored once instead of twice.

    Args:
        base: The pretrained Linear; frozen here, and kept as ``self.base`` (its state-dict keys move under
            ``base.``, plain ``weight``/``bias`` keys still load into it).
        rank: See ``SNELLAConfig``.
        kernel: See ``SNELLAConfig``.
        sparsity: See ``SNELLAConfig``; per update, and the allocator changes it during training.
        mask: See ``SNELLAConfig``.
        dropout: See ``SNELLAConfig``.
        drop_path: See ``SNELLAConfig``.
        checkpoint: See ``SNELLAConfig``.
        split: Independent updates stacked along the output rows, e.g. 3 for q, k and v of a fused qkv projection
            (``SNELLAConfig.split_qkv``), each with its own factors and sparsity; must divide ``base.out_features``.

    Raises:
        TypeError: ``base`` is not an ``nn.Linear``.
        ValueError: ``split`` does not divide the output features, or an option is invalid (as ``SNELLAConfig``
            would say).
    """

    def __init__(self, base: nn.Linear, rank: int, kernel: str = 'snella', sparsity: float = 0.0,
                 mask: str = 'magnitude', dropout: float = 0.0, drop_path: float = 0.0,
                 checkpoint: bool = True, split: int = 1) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f'SNELLALinear wraps nn.Linear, got {type(base).__name__}')
        if split < 1 or base.out_features % split:
            raise ValueError(f'split={split} must divide out_features={base.out_features}')
        check_fraction('dropout', dropout)
        check_fraction('drop_path', drop_path)
        self.base = base
        self.base.requires_grad_(False)
        rows = base.out_features // split
        self.deltas = nn.ModuleList(
            SparseKernelDelta(base.in_features, rows, rank, kernel, sparsity, mask) for _ in range(split))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.drop_path_prob = drop_path
        self.checkpoint = checkpoint
        self._eval_weight: Optional[Tuple[list, torch.Tensor]] = None  # (version key, W0 + ΔW): see _eval_weight
        # Not a submodule: it stays registered where it was (same state-dict keys, moved with the model).
        object.__setattr__(self, 'absorbed', None)
        self._register_load_state_dict_pre_hook(self._accept_plain_linear_keys)

    # Plain-Linear checkpoints ('weight', 'bias') load into the wrapped base, so pretrained weights can be
    # loaded after injection by the backbone's own init, without key surgery by the user.
    @staticmethod
    def _accept_plain_linear_keys(state_dict, prefix, *args) -> None:
        for name in ('weight', 'bias'):
            if prefix + name in state_dict and prefix + 'base.' + name not in state_dict:
                state_dict[prefix + 'base.' + name] = state_dict.pop(prefix + name)

    @property
    def in_features(self) -> int:
        """The base Linear's input features."""
        return self.base.in_features

    @property
    def out_features(self) -> int:
        """The base Linear's output features."""
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The frozen base weight, so code that reads ``linear.weight`` (dtype, shape) keeps working."""
        return self.base.weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        """The frozen base bias, or None."""
        return self.base.bias

    def _single(self, name: str):
        if len(self.deltas) != 1:
            raise AttributeError(f'{name} is per update; this layer holds {len(self.deltas)}: use deltas[i].{name}')
        return getattr(self.deltas[0], name)

    @property
    def in_factors(self) -> nn.Parameter:
        """The single update's input factors (a layer with ``split`` > 1 has them per update)."""
        return self._single('in_factors')

    @property
    def out_factors(self) -> nn.Parameter:
        """The single update's output factors (a layer with ``split`` > 1 has them per update)."""
        return self._single('out_factors')

    @property
    def sparsity(self) -> torch.Tensor:
        """The single update's sparsity buffer (a layer with ``split`` > 1 has one per update)."""
        return self._single('sparsity')

    def factor_parameters(self) -> List[nn.Parameter]:
        """Every update's trainable tensors.

        Returns:
            Each update's ``factor_parameters()``, update after update.
        """
        return [p for d in self.deltas for p in d.factor_parameters()]

    def delta_weight(self) -> torch.Tensor:
        """The effective sparse ΔW that forward uses.

        Returns:
            ΔW (out x in), the updates' blocks stacked along the rows, float32, under autograd.
        """
        return torch.cat([d.delta_weight() for d in self.deltas], dim=0)

    def _is_low_rank(self) -> bool:
        return all(d.is_low_rank for d in self.deltas)

    def _branch_is_separate(self) -> bool:
        return self.training and (self.drop_path_prob > 0 or not isinstance(self.dropout, nn.Identity))

    def _absorbed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the absorbed module's own computation (its ``forward`` in place is a pass-through)."""
        return type(self.absorbed).forward(self.absorbed, x)

    def _delta_linear(self, x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                      activation=None) -> torch.Tensor:
        if self.checkpoint:
            return _FusedDeltaLinear.apply(x, weight, bias, activation, list(self.deltas), *self.factor_parameters())
        if activation is not None:
            x = activation(x)
        full = self.delta_weight()
        if weight is not None:
            full = weight + full.to(weight.dtype)
        return F.linear(x, full.to(x.dtype), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x) + x @ ΔW.T``, by the path the class docstring describes.

        Args:
            x: Input of shape ``(..., in_features)``.

        Returns:
            Output of shape ``(..., out_features)``.

        Raises:
            RuntimeError: An absorbed module has trainable parameters.
        """
        activation = None
        if self.absorbed is not None:
            if any(p.requires_grad for p in self.absorbed.parameters()):
                raise RuntimeError(f'the {type(self.absorbed).__name__} absorbed into this layer has trainable '
                                   'parameters, which its recomputation does not train: freeze them, or build '
                                   'the model with absorb_activations=False')
            activation = self._absorbed_forward
        low_rank = self._is_low_rank()
        if self.training or torch.is_grad_enabled():
            if self._eval_weight is not None:  # nn.Module's __setattr__ is slow: only when there is a cache to drop
                self._eval_weight = None
        elif not low_rank:  # eval without gradient: path 3 or 4's values from the cached W0 + ΔW
            inputs = x if activation is None else activation(x)
            return F.linear(inputs, self._cached_eval_weight().to(x.dtype), self.base.bias)
        if low_rank or self._branch_is_separate():  # paths 1 and 2 (see the class docstring)
            if activation is not None:
                x = activation(x)
            if low_rank:
                branch = torch.cat([d.low_rank_forward(self.dropout(x)) for d in self.deltas], dim=-1)
            else:
                branch = self._delta_linear(self.dropout(x), None, None)
            return self.base(x) + drop_path(branch, self.drop_path_prob, self.training)
        return self._delta_linear(x, self.base.weight, self.base.bias, activation)  # path 3 or 4

    def _eval_weight_sources(self) -> List[torch.Tensor]:
        """Return every tensor ``W0 + ΔW`` is computed from."""
        return [self.base.weight, *self.factor_parameters(), *(d.sparsity for d in self.deltas)]

    @torch.no_grad()
    def _cached_eval_weight(self) -> torch.Tensor:
        """Return ``W0 + ΔW`` as paths 3 and 4 compute it, rebuilt only when a source tensor changed.

        A change is a replaced (identity), moved (data pointer) or in place written (version counter) tensor.
        ``.data.copy_`` and fused optimizers write without a version bump: ``train()`` and every forward with
        gradient drop the cache for that reason.
        """
        sources = self._eval_weight_sources()
        if self._eval_weight is not None:
            key, weight = self._eval_weight
            if all(tensor is known and tensor._version == version and tensor.data_ptr() == pointer
                   for tensor, (known, version, pointer) in zip(sources, key)):
                return weight
        weight = self.base.weight + self.delta_weight().to(self.base.weight.dtype)
        self._eval_weight = ([(t, t._version, t.data_ptr()) for t in sources], weight)
        return weight

    def train(self, mode: bool = True) -> 'SNELLALinear':
        """Switch mode, and drop the eval cache.

        Training must not keep the cache's memory, and weights written without a version bump (an EMA swap through
        ``.data.copy_`` before ``model.eval()``) must not reuse it.

        Args:
            mode: Training (True) or evaluation (False).

        Returns:
            This layer.
        """
        self._eval_weight = None
        return super().train(mode)

    def __getstate__(self) -> dict:
        """Return the state without the eval cache, which copies (an EMA model's) and pickles rebuild on demand."""
        state = super().__getstate__()
        state['_eval_weight'] = None
        return state

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ΔW folded into the base weight: zero-overhead inference and export.

        A layer that absorbed a module cannot stand alone as a Linear: ``merge_snella`` folds it and gives the
        absorbed module its own forward back.

        Returns:
            A new Linear on the base weight's device and dtype.

        Raises:
            RuntimeError: This layer absorbed a module.
        """
        if self.absorbed is not None:
            raise RuntimeError(f'this layer computes an absorbed {type(self.absorbed).__name__} before its Linear; '
                               'merge the whole model with merge_snella(model), which restores it')
        return self._folded_linear()

    @torch.no_grad()
    def _folded_linear(self) -> nn.Linear:
        merged = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None,
                           device=self.base.weight.device, dtype=self.base.weight.dtype)
        merged.weight.copy_((self.base.weight.float() + self.delta_weight()).to(merged.weight.dtype))
        if self.base.bias is not None:
            merged.bias.copy_(self.base.bias)
        return merged

    def extra_repr(self) -> str:
        """Return split, checkpointing and drop path, for ``print(model)``."""
        return f'split={len(self.deltas)}, checkpoint={self.checkpoint}, drop_path={self.drop_path_prob}'
