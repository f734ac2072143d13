"""Triton kernels of the fused distance-kernel path (``fused_kernels.py`` launches them; this module imports triton).

``build_kernel`` and ``grad_kernel`` run one program per block of ``BLOCK_I`` rows of ``M`` (input features) and
update (the grid's second axis: the q, k and v updates of one projection share a launch), sweeping the output axis
in tiles of ``BLOCK_J``; ``column_grad_kernel`` runs one per block of columns and update. Nothing dense but the
output is read or kept: each kernel recomputes the distance planes, the softmax's row statistics and the matrix from
the factors with the same ``@triton.jit`` helpers, so the selection, the ΔW build, a backward rebuild and the gradient
see bit-identical entries.
"""
import triton
import triton.language as tl


@triton.jit
def _distance_tile(a_ptr, b_ptr, h, rows, cols, row_mask, col_mask, n_in, n_out,
                   RANK: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """Return group ``h``'s Euclidean distances ``sqrt(sum_k (A_h[i, k] - B_h[j, k])^2)`` of one tile.

    Summed from differences: no cancellation, unlike a matrix-product formula.
    """
    total = tl.zeros((BLOCK_I, BLOCK_J), dtype=tl.float32)
    # A loop, not tl.static_range: unrolled, every factor column's loads were hoisted and held at once (255
    # registers and spills at rank 32 on sm_90, tools/analysis/compile_fused_kernels.py; 17 s to compile)
    for k in range(RANK):
        a = tl.load(a_ptr + (h * n_in + rows) * RANK + k, mask=row_mask, other=0.0)
        b = tl.load(b_ptr + (h * n_out + cols) * RANK + k, mask=col_mask, other=0.0)
        difference = a[:, None] - b[None, :]
        total += difference * difference
    return tl.sqrt_rn(total)


@triton.jit
def _base_tile(a_ptr, b_ptr, rows, cols, row_mask, col_mask, n_in, n_out, GROUPS: tl.constexpr,
               RANK: tl.constexpr, SCALE: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """Return SNELL's matrix of one tile: ``SCALE * sum_h (-1)^h d_h``."""
    base = _distance_tile(a_ptr, b_ptr, 0, rows, cols, row_mask, col_mask, n_in, n_out, RANK, BLOCK_I, BLOCK_J)
    for h in tl.static_range(1, GROUPS):
        plane = _distance_tile(a_ptr, b_ptr, h, rows, cols, row_mask, col_mask, n_in, n_out, RANK, BLOCK_I, BLOCK_J)
        if h % 2 == 1:
            base -= plane
        else:
            base += plane
    return base * SCALE


@triton.jit
def _row_stats(a_ptr, b_ptr, gamma, rows, row_mask, n_in, n_out, GROUPS: tl.constexpr, RANK: tl.constexpr,
               SCALE: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """Return each row's max and sum of ``exp(logits - max)`` over its outputs, online over the tiles (one pass)."""
    row_max = tl.full((BLOCK_I,), float('-inf'), dtype=tl.float32)
    row_sum = tl.zeros((BLOCK_I,), dtype=tl.float32)
    for start in range(0, n_out, BLOCK_J):
        cols = start + tl.arange(0, BLOCK_J)
        col_mask = cols < n_out
        base = _base_tile(a_ptr, b_ptr, rows, cols, row_mask, col_mask, n_in, n_out, GROUPS, RANK, SCALE,
                          BLOCK_I, BLOCK_J)
        logits = tl.where(col_mask[None, :], tl.div_rn(base, gamma), float('-inf'))
        new_max = tl.maximum(row_max, tl.max(logits, 1))
        row_sum = row_sum * tl.exp(row_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), 1)
        row_max = new_max
    return row_max, row_sum


@triton.jit
def _matrix_tile(a_ptr, b_ptr, alpha, gamma, beta, row_max, row_sum, rows, cols, row_mask, col_mask, n_in, n_out,
                 GROUPS: tl.constexpr, RANK: tl.constexpr, SCALE: tl.constexpr, SOFTMAX: tl.constexpr,
                 BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """Return ``(base, logits, soft, M)`` of one tile.

    SNELL's ``M`` is the base (and so are ``logits`` and ``soft``); SNELLA's is
    ``M = base + alpha * softmax(base / gamma) + beta``.
    """
    base = _base_tile(a_ptr, b_ptr, rows, cols, row_mask, col_mask, n_in, n_out, GROUPS, RANK, SCALE,
                      BLOCK_I, BLOCK_J)
    if SOFTMAX:
        logits = tl.div_rn(base, gamma)
        soft = tl.div_rn(tl.exp(logits - row_max[:, None]), row_sum[:, None])
        matrix = soft * alpha + base + beta
    else:
        logits = base
        soft = base
        matrix = base
    return base, logits, soft, matrix


@triton.jit
def _mask_scale(matrix, threshold, MAGNITUDE: tl.constexpr, THRESHOLD: tl.constexpr):
    """Return the mask's factor on ``M``: ``|M|`` (magnitude) or 1 (binary, unmasked), times ``|M| > threshold``."""
    magnitude = tl.abs(matrix)
    if MAGNITUDE:
        scale = magnitude
    else:
        scale = tl.full(matrix.shape, 1.0, dtype=tl.float32)
    if THRESHOLD:
        scale = tl.where(magnitude > threshold, scale, 0.0)
    return scale


@triton.jit
def _program_constants(a_ptr, b_ptr, alpha_ptr, gamma_ptr, beta_ptr, threshold_ptr, rows, row_mask, n_in, n_out,
                       GROUPS: tl.constexpr, RANK: tl.constexpr, SCALE: tl.constexpr, SOFTMAX: tl.constexpr,
                       THRESHOLD: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """Return SNELLA's scalars, the threshold and the program's row statistics (placeholders where unused)."""
    if SOFTMAX:
        alpha = tl.load(alpha_ptr)
        gamma = tl.load(gamma_ptr)
        beta = tl.load(beta_ptr)
        row_max, row_sum = _row_stats(a_ptr, b_ptr, gamma, rows, row_mask, n_in, n_out, GROUPS, RANK, SCALE,
                                      BLOCK_I, BLOCK_J)
    else:
        alpha = 0.0
        gamma = 1.0
        beta = 0.0
        row_max = tl.zeros((BLOCK_I,), dtype=tl.float32)
        row_sum = tl.zeros((BLOCK_I,), dtype=tl.float32)
    if THRESHOLD:
        threshold = tl.load(threshold_ptr)
    else:
        threshold = 0.0
    return alpha, gamma, beta, threshold, row_max, row_sum


@triton.jit
def _update_pointers(a_ptr, b_ptr, alpha_ptr, gamma_ptr, beta_ptr, scalar_stride, threshold_ptr, n_in, n_out,
                     GROUPS: tl.constexpr, RANK: tl.constexpr):
    """Return the pointers of the update this program works on (``program_id(1)``, 0 for a single update).

    The factors of every update lie one after the other (``(updates, GROUPS, rows, RANK)``), the scalars
    ``scalar_stride`` apart, the thresholds side by side.
    """
    update = tl.program_id(1)
    return (a_ptr + update * GROUPS * n_in * RANK, b_ptr + update * GROUPS * n_out * RANK,
            alpha_ptr + update * scalar_stride, gamma_ptr + update * scalar_stride, beta_ptr + update * scalar_stride,
            threshold_ptr + update, update)


@triton.jit
def build_kernel(a_ptr, b_ptr, alpha_ptr, gamma_ptr, beta_ptr, scalar_stride, threshold_ptr, base_ptr, out_ptr,
                 n_in, n_out, GROUPS: tl.constexpr, RANK: tl.constexpr, SCALE: tl.constexpr, SOFTMAX: tl.constexpr,
                 MAGNITUDE: tl.constexpr, THRESHOLD: tl.constexpr, WRITE_DELTA: tl.constexpr,
                 HAS_BASE: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """Write one program's rows of ΔW (W0 + ΔW with ``HAS_BASE``), or of |M| for the selection.

    ``WRITE_DELTA``: the update's rows ``update * n_out ...`` of ΔW = (M * scale).T (out x in, the updates' blocks
    stacked along the rows, contiguous), plus W0's same entries with ``HAS_BASE``; otherwise |M| (updates x in x out,
    contiguous), the input of the selection.
    """
    a_ptr, b_ptr, alpha_ptr, gamma_ptr, beta_ptr, threshold_ptr, update = _update_pointers(
        a_ptr, b_ptr, alpha_ptr, gamma_ptr, beta_ptr, scalar_stride, threshold_ptr, n_in, n_out, GROUPS, RANK)
    rows = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    row_mask = rows < n_in
    alpha, gamma, beta, threshold, row_max, row_sum = _program_constants(
        a_ptr, b_ptr, alpha_ptr, gamma_ptr, beta_ptr, threshold_ptr, rows, row_mask, n_in, n_out, GROUPS, RANK, SCALE,
        SOFTMAX, THRESHOLD, BLOCK_I, BLOCK_J)
    for start in range(0, n_out, BLOCK_J):
        cols = start + tl.arange(0, BLOCK_J)
        col_mask = cols < n_out
        inside = row_mask[:, None] & col_mask[None, :]
        _, _, _, matrix = _matrix_tile(a_ptr, b_ptr, alpha, gamma, beta, row_max, row_sum, rows, cols, row_mask,
                                       col_mask, n_in, n_out, GROUPS, RANK, SCALE, SOFTMAX, BLOCK_I, BLOCK_J)
        if WRITE_DELTA:
            masked = matrix * _mask_scale(matrix, threshold, MAGNITUDE, THRESHOLD)
            at = (update * n_out + cols[None, :]) * n_in + rows[:, None]
            if HAS_BASE:  # W0 + ΔW, as eager adds them
                masked = tl.load(base_ptr + at, mask=inside, other=0.0) + masked
            tl.store(out_ptr + at, masked, mask=inside)
        else:
            tl.store(out_ptr + (update * n_in + rows[:, None]) * n_out + cols[None, :], tl.abs(matrix), mask=inside)


@triton.jit
def _factor_sums(ratio, a_ptr, b_ptr, h, rows, cols, row_mask, col_mask, accumulated, n_in, n_out, AXIS: tl.constexpr,
                 RANK: tl.constexpr, WIDTH: tl.constexpr):
    """Return ``accumulated`` plus a tile's share of plane ``h``'s factor gradients (column ``h * RANK + k``).

    ``AXIS`` 1, the input factors': ``sum_j ratio[i, j] (A[i, k] - B[j, k])``; ``AXIS`` 0, the output factors':
    ``sum_i ratio[i, j] (B[j, k] - A[i, k])``. Torch's ``_euclidean_dist_backward`` computes the same sums as
    ``A * rowsum(ratio) - ratio @ B``; summed from differences, they do not cancel.
    """
    slots = tl.arange(0, WIDTH)
    for k in range(RANK):  # a loop for the registers' sake, as in _distance_tile
        a = tl.load(a_ptr + (h * n_in + rows) * RANK + k, mask=row_mask, other=0.0)
        b = tl.load(b_ptr + (h * n_out + cols) * RANK + k, mask=col_mask, other=0.0)
        if AXIS == 1:
            share = tl.sum(ratio * (a[:, None] - b[None, :]), 1)
        else:
            share = tl.sum(ratio * (b[None, :] - a[:, None]), 0)
        accumulated += tl.where(slots[None, :] == h * RANK + k, share[:, None], 0.0)
    return accumulated


@triton.jit
def _store_ratios(a_ptr, b_ptr, grad_base, ratio_ptr, grad_in, rows, cols, row_mask, col_mask, n_in, n_out,
                  GROUPS: tl.constexpr, RANK: tl.constexpr, SCALE: tl.constexpr,
                  BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, WIDTH: tl.constexpr):
    """Return ``grad_in`` plus the tile's share of the input factors' gradient, storing the tile's ratio planes.

    The planes are the distances' backward as torch's ``_euclidean_dist_backward`` computes it:
    ratio_h = (-1)^h * SCALE * grad / d_h, 0 where d_h is 0.
    """
    inside = row_mask[:, None] & col_mask[None, :]
    grad_even = grad_base * SCALE
    for h in tl.static_range(GROUPS):
        plane = _distance_tile(a_ptr, b_ptr, h, rows, cols, row_mask, col_mask, n_in, n_out, RANK, BLOCK_I, BLOCK_J)
        zero = plane == 0.0
        ratio = tl.where(zero, 0.0, tl.div_rn(grad_even, tl.where(zero, 1.0, plane)))
        if h % 2 == 1:
            ratio = -ratio
        tl.store(ratio_ptr + (h * n_in + rows[:, None]) * n_out + cols[None, :], ratio, mask=inside)
        grad_in = _factor_sums(ratio, a_ptr, b_ptr, h, rows, cols, row_mask, col_mask, grad_in, n_in, n_out, 1, RANK,
                               WIDTH)
    return grad_in


@triton.jit
def _store_factor_grad(grad_ptr, accumulated, rows, row_mask, n_rows, GROUPS: tl.constexpr, RANK: tl.constexpr,
                       WIDTH: tl.constexpr):
    """Store accumulated gradients (rows x ``h * RANK + k``) into a factor's gradient (GROUPS, rows, RANK)."""
    slots = tl.arange(0, WIDTH)
    at = ((slots[None, :] // RANK) * n_rows + rows[:, None]) * RANK + slots[None, :] % RANK
    tl.store(grad_ptr + at, accumulated, mask=row_mask[:, None] & (slots[None, :] < GROUPS * RANK))


@triton.jit
def _grad_base_tile(a_ptr, b_ptr, grad_ptr, grad_stride_i, grad_stride_j, alpha, gamma, beta, threshold, row_max,
                    row_sum, rows, cols, row_mask, col_mask, n_in, n_out, GROUPS: tl.constexpr, RANK: tl.constexpr,
                    SCALE: tl.constexpr, SOFTMAX: tl.constexpr, MAGNITUDE: tl.constexpr, THRESHOLD: tl.constexpr,
                    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """Return ``(logits, soft, G * scale)`` of one tile, the last 0 outside the matrix."""
    inside = row_mask[:, None] & col_mask[None, :]
    _, logits, soft, matrix = _matrix_tile(a_ptr, b_ptr, alpha, gamma, beta, row_max, row_sum, rows, cols, row_mask,
                                           col_mask, n_in, n_out, GROUPS, RANK, SCALE, SOFTMAX, BLOCK_I, BLOCK_J)
    grad = tl.load(grad_ptr + rows[:, None] * grad_stride_i + cols[None, :] * grad_stride_j, mask=inside, other=0.0)
    grad_base = tl.where(inside, grad * _mask_scale(matrix, threshold, MAGNITUDE, THRESHOLD), 0.0)
    return logits, soft, grad_base


@triton.jit
def grad_kernel(a_ptr, b_ptr, alpha_ptr, gamma_ptr, beta_ptr, scalar_stride, threshold_ptr, grad_ptr, grad_stride_i,
                grad_stride_j, ratio_ptr, grad_in_ptr, partial_ptr, n_in, n_out, GROUPS: tl.constexpr,
                RANK: tl.constexpr, SCALE: tl.constexpr, SOFTMAX: tl.constexpr, MAGNITUDE: tl.constexpr,
                THRESHOLD: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, WIDTH: tl.constexpr):
    """Write the backward's row-wise part from G = dL/dM_masked (in x updates * out, any strides).

    Per update: the ratio planes (H, in, out), which ``column_grad_kernel`` turns into the output factors' gradient;
    the input factors' gradient (H, in, RANK) of this program's rows; and, for SNELLA, this program's partial sums of
    the gradients of alpha, gamma and beta at ``partial_ptr + (3 * update + {0, 1, 2}) * num_programs + program``.
    """
    a_ptr, b_ptr, alpha_ptr, gamma_ptr, beta_ptr, threshold_ptr, update = _update_pointers(
        a_ptr, b_ptr, alpha_ptr, gamma_ptr, beta_ptr, scalar_stride, threshold_ptr, n_in, n_out, GROUPS, RANK)
    grad_ptr += update * n_out * grad_stride_j
    ratio_ptr += update * GROUPS * n_in * n_out
    grad_in_ptr += update * GROUPS * n_in * RANK
    program = tl.program_id(0)
    rows = program * BLOCK_I + tl.arange(0, BLOCK_I)
    row_mask = rows < n_in
    alpha, gamma, beta, threshold, row_max, row_sum = _program_constants(
        a_ptr, b_ptr, alpha_ptr, gamma_ptr, beta_ptr, threshold_ptr, rows, row_mask, n_in, n_out, GROUPS, RANK, SCALE,
        SOFTMAX, THRESHOLD, BLOCK_I, BLOCK_J)
    # Per-row partial sums, reduced at the end (vectors keep every loop-carried value's type fixed). SNELLA's softmax
    # backward needs rowsum(alpha * grad_base * soft) before any ratio: a first sweep for it.
    row_dot = tl.zeros((BLOCK_I,), dtype=tl.float32)
    rows_alpha = tl.zeros((BLOCK_I,), dtype=tl.float32)
    rows_beta = tl.zeros((BLOCK_I,), dtype=tl.float32)
    rows_gamma = tl.zeros((BLOCK_I,), dtype=tl.float32)
    grad_in = tl.zeros((BLOCK_I, WIDTH), dtype=tl.float32)
    if SOFTMAX:
        for start in range(0, n_out, BLOCK_J):
            cols = start + tl.arange(0, BLOCK_J)
            _, soft, grad_base = _grad_base_tile(
                a_ptr, b_ptr, grad_ptr, grad_stride_i, grad_stride_j, alpha, gamma, beta, threshold, row_max, row_sum,
                rows, cols, row_mask, cols < n_out, n_in, n_out, GROUPS, RANK, SCALE, SOFTMAX, MAGNITUDE, THRESHOLD,
                BLOCK_I, BLOCK_J)
            rows_beta += tl.sum(grad_base, 1)
            rows_alpha += tl.sum(grad_base * soft, 1)
            row_dot += tl.sum(grad_base * alpha * soft, 1)
    for start in range(0, n_out, BLOCK_J):
        cols = start + tl.arange(0, BLOCK_J)
        col_mask = cols < n_out
        logits, soft, grad_base = _grad_base_tile(
            a_ptr, b_ptr, grad_ptr, grad_stride_i, grad_stride_j, alpha, gamma, beta, threshold, row_max, row_sum,
            rows, cols, row_mask, col_mask, n_in, n_out, GROUPS, RANK, SCALE, SOFTMAX, MAGNITUDE, THRESHOLD,
            BLOCK_I, BLOCK_J)
        if SOFTMAX:
            inside = row_mask[:, None] & col_mask[None, :]
            grad_logits = tl.where(inside, soft * (grad_base * alpha - row_dot[:, None]), 0.0)
            rows_gamma += tl.sum(tl.where(inside, tl.div_rn(logits, gamma) * grad_logits, 0.0), 1)
            grad_base = tl.div_rn(grad_logits, gamma) + grad_base
        grad_in = _store_ratios(a_ptr, b_ptr, grad_base, ratio_ptr, grad_in, rows, cols, row_mask, col_mask, n_in,
                                n_out, GROUPS, RANK, SCALE, BLOCK_I, BLOCK_J, WIDTH)
    _store_factor_grad(grad_in_ptr, grad_in, rows, row_mask, n_in, GROUPS, RANK, WIDTH)
    if SOFTMAX:
        programs = tl.num_programs(0)
        partial_ptr += 3 * update * programs
        tl.store(partial_ptr + program, tl.sum(rows_alpha, 0))
        tl.store(partial_ptr + programs + program, -tl.sum(rows_gamma, 0))
        tl.store(partial_ptr + 2 * programs + program, tl.sum(rows_beta, 0))


@triton.jit
def column_grad_kernel(a_ptr, b_ptr, ratio_ptr, grad_out_ptr, partial_ptr, grad_scalars_ptr, n_in, n_out, n_partials,
                       GROUPS: tl.constexpr, RANK: tl.constexpr, SOFTMAX: tl.constexpr, BLOCK_I: tl.constexpr,
                       BLOCK_J: tl.constexpr, WIDTH: tl.constexpr, BLOCK_P: tl.constexpr):
    """Write the output factors' gradient (H, out, RANK) of one program's columns from ``grad_kernel``'s ratio planes.

    For SNELLA the first program of each update also sums ``grad_kernel``'s partial sums into the gradients of
    alpha, gamma and beta (``grad_scalars_ptr + 3 * update + {0, 1, 2}``).
    """
    update = tl.program_id(1)
    a_ptr += update * GROUPS * n_in * RANK
    b_ptr += update * GROUPS * n_out * RANK
    ratio_ptr += update * GROUPS * n_in * n_out
    cols = tl.program_id(0) * BLOCK_J + tl.arange(0, BLOCK_J)
    col_mask = cols < n_out
    grad_out = tl.zeros((BLOCK_J, WIDTH), dtype=tl.float32)
    for start in range(0, n_in, BLOCK_I):
        rows = start + tl.arange(0, BLOCK_I)
        row_mask = rows < n_in
        inside = row_mask[:, None] & col_mask[None, :]
        for h in tl.static_range(GROUPS):
            ratio = tl.load(ratio_ptr + (h * n_in + rows[:, None]) * n_out + cols[None, :], mask=inside, other=0.0)
            grad_out = _factor_sums(ratio, a_ptr, b_ptr, h, rows, cols, row_mask, col_mask, grad_out, n_in, n_out, 0,
                                    RANK, WIDTH)
    _store_factor_grad(grad_out_ptr + update * GROUPS * n_out * RANK, grad_out, cols, col_mask, n_out, GROUPS, RANK,
                       WIDTH)
    if SOFTMAX:
        if tl.program_id(0) == 0:
            for scalar in tl.static_range(3):
                total = tl.zeros((BLOCK_P,), dtype=tl.float32)
                for start in range(0, n_partials, BLOCK_P):
                    at = start + tl.arange(0, BLOCK_P)
                    total += tl.load(partial_ptr + (3 * update + scalar) * n_partials + at, mask=at < n_partials,
                                     other=0.0)
                tl.store(grad_scalars_ptr + 3 * update + scalar, tl.sum(total, 0))
