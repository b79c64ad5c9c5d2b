"""Cubic B-spline radial functions contracted with learned weights, as one fused op.

On a uniform grid of knot spacing ``h = r_max / (K - 3)`` over [0, r_max], K cubic
B-splines ``B_k`` give ``R(r)[c] = Σ_k B_k(r) W[k, c]``. With ``t = r / h``,
``i = floor(t)`` (clamped to the last interval) and ``u = t - i``, only four basis
functions are non-zero::

    R(r) = Σ_{m=0..3} β_m(u) W[i + m],     β0 = (1-u)³/6,  β1 = (3u³ - 6u² + 4)/6,
                                           β2 = (-3u³ + 3u² + 3u + 1)/6,  β3 = u³/6,

which is twice continuously differentiable in r (forces are continuous, and force
training can take the second derivative). Two linear primitives cover the op and all
of its derivatives:

    E_d(r, W)[e] = h^-d Σ_m β_m^(d)(u_e) W[i_e + m]                (evaluate, [E, C])
    S_d(r, G)[k] = h^-d Σ_{e,m: i_e+m=k} β_m^(d)(u_e) G[e]          (scatter, [K, C]; S_d = E_dᵀ)

with ``∂E_d/∂W = S_d``, ``∂E_d/∂r = E_{d+1}``, ``∂S_d/∂G = E_d`` and
``∂S_d/∂r = ⟨G, E_{d+1}(·)⟩``; the autograd functions below express every backward
through the same two primitives, so derivatives of any order exist (zero from d = 4).
Each primitive has a Triton kernel (CUDA) and a pure-torch twin (everywhere); the
kernel builds the [block, K] basis tile in registers and contracts it in one pass.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch twin serves
    triton = None

BACKENDS = ("auto", "torch", "triton")


def knot_spacing(num_basis: int, r_max: float) -> float:
    """``h`` (Å) of K cubic B-splines spanning [0, r_max]."""
    if num_basis < 4:
        raise ValueError(f"a cubic spline needs at least 4 basis functions, got {num_basis}")
    return float(r_max) / (num_basis - 3)


# ---- pure-torch twin -------------------------------------------------------------------


def _locate(r: torch.Tensor, h: float, num_basis: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = r / h
    i = torch.floor(t).clamp(0, num_basis - 4)
    return i.long(), t - i


def blending(u: torch.Tensor, order: int) -> torch.Tensor:
    """[E, 4] values of the ``order``-th u-derivative of β_0..β_3 at ``u``."""
    if order == 0:
        b = [(1 - u) ** 3 / 6, (3 * u**3 - 6 * u**2 + 4) / 6, (-3 * u**3 + 3 * u**2 + 3 * u + 1) / 6, u**3 / 6]
    elif order == 1:
        b = [-((1 - u) ** 2) / 2, (3 * u**2 - 4 * u) / 2, (-3 * u**2 + 2 * u + 1) / 2, u**2 / 2]
    elif order == 2:
        b = [1 - u, 3 * u - 2, 1 - 3 * u, u]
    elif order == 3:
        one = torch.ones_like(u)
        b = [-one, 3 * one, -3 * one, one]
    else:
        b = [torch.zeros_like(u)] * 4
    return torch.stack(b, dim=-1)


def evaluate_torch(r: torch.Tensor, weights: torch.Tensor, h: float, order: int) -> torch.Tensor:
    """E_order(r, W): [E] Å, [K, C] -> [E, C]."""
    i, u = _locate(r, h, weights.shape[0])
    beta = blending(u, order) * h**-order  # [E, 4]
    rows = i[:, None] + torch.arange(4, device=r.device)  # [E, 4]
    return torch.einsum("em,emc->ec", beta, weights[rows])


def scatter_torch(r: torch.Tensor, grad: torch.Tensor, h: float, order: int, num_basis: int) -> torch.Tensor:
    """S_order(r, G): [E] Å, [E, C] -> [K, C], the transpose of `evaluate_torch` in W."""
    i, u = _locate(r, h, num_basis)
    beta = blending(u, order) * h**-order
    rows = (i[:, None] + torch.arange(4, device=r.device)).reshape(-1)
    values = (beta[:, :, None] * grad[:, None, :]).reshape(-1, grad.shape[1])
    return torch.zeros(num_basis, grad.shape[1], dtype=grad.dtype, device=grad.device).index_add_(0, rows, values)


# ---- Triton kernels ----------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _basis_tile(r, inv_h, scale, num_intervals, offs_k, ORDER: tl.constexpr):
        """[BLOCK_E, K_PAD] dense basis values (four non-zeros per row) of the given derivative order."""
        t = r * inv_h
        i = tl.minimum(tl.maximum(tl.floor(t), 0.0), num_intervals - 1.0)
        u = t - i
        if ORDER == 0:
            b0 = (1 - u) * (1 - u) * (1 - u) / 6
            b1 = (3 * u * u * u - 6 * u * u + 4) / 6
            b2 = (-3 * u * u * u + 3 * u * u + 3 * u + 1) / 6
            b3 = u * u * u / 6
        elif ORDER == 1:
            b0 = -(1 - u) * (1 - u) / 2
            b1 = (3 * u * u - 4 * u) / 2
            b2 = (-3 * u * u + 2 * u + 1) / 2
            b3 = u * u / 2
        elif ORDER == 2:
            b0 = 1 - u
            b1 = 3 * u - 2
            b2 = 1 - 3 * u
            b3 = u
        else:
            b0 = u * 0 - 1
            b1 = u * 0 + 3
            b2 = u * 0 - 3
            b3 = u * 0 + 1
        rel = offs_k[None, :] - i.to(tl.int32)[:, None]
        tile = tl.where(rel == 0, b0[:, None], 0.0)
        tile = tl.where(rel == 1, b1[:, None], tile)
        tile = tl.where(rel == 2, b2[:, None], tile)
        tile = tl.where(rel == 3, b3[:, None], tile)
        return tile * scale

    @triton.jit
    def _evaluate_kernel(
        r_ptr, w_ptr, out_ptr, n_edges, n_channels, n_basis, inv_h, scale,
        ORDER: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr, K_PAD: tl.constexpr, USE_DOT: tl.constexpr,
    ):
        offs_e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
        offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        offs_k = tl.arange(0, K_PAD)
        mask_e, mask_c = offs_e < n_edges, offs_c < n_channels
        r = tl.load(r_ptr + offs_e, mask=mask_e, other=0.0)
        tile = _basis_tile(r, inv_h, scale, n_basis - 3.0, offs_k, ORDER)
        w = tl.load(w_ptr + offs_k[:, None] * n_channels + offs_c[None, :],
                    mask=(offs_k[:, None] < n_basis) & mask_c[None, :], other=0.0)
        if USE_DOT:
            out = tl.dot(tile.to(w.dtype), w, input_precision="ieee")
        else:
            out = tl.sum(tile.to(w.dtype)[:, :, None] * w[None, :, :], axis=1)
        tl.store(out_ptr + offs_e[:, None] * n_channels + offs_c[None, :], out, mask=mask_e[:, None] & mask_c[None, :])

    @triton.jit
    def _scatter_kernel(
        r_ptr, g_ptr, out_ptr, n_edges, n_channels, n_basis, inv_h, scale, blocks_per_program,
        ORDER: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr, K_PAD: tl.constexpr, USE_DOT: tl.constexpr,
    ):
        offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        offs_k = tl.arange(0, K_PAD)
        mask_c = offs_c < n_channels
        acc = tl.zeros((K_PAD, BLOCK_C), dtype=g_ptr.dtype.element_ty)
        for j in range(0, blocks_per_program):  # edge blocks pid, pid + P, pid + 2P, ...: one atomic add per program
            offs_e = (tl.program_id(0) + j * tl.num_programs(0)) * BLOCK_E + tl.arange(0, BLOCK_E)
            mask_e = offs_e < n_edges
            r = tl.load(r_ptr + offs_e, mask=mask_e, other=0.0)
            tile = _basis_tile(r, inv_h, scale, n_basis - 3.0, offs_k, ORDER)
            tile = tl.where(mask_e[:, None], tile, 0.0).to(acc.dtype)
            g = tl.load(g_ptr + offs_e[:, None] * n_channels + offs_c[None, :],
                        mask=mask_e[:, None] & mask_c[None, :], other=0.0)
            if USE_DOT:
                acc += tl.dot(tl.trans(tile), g, input_precision="ieee")
            else:
                acc += tl.sum(tile[:, :, None] * g[:, None, :], axis=0)
        tl.atomic_add(out_ptr + offs_k[:, None] * n_channels + offs_c[None, :], acc,
                      mask=(offs_k[:, None] < n_basis) & mask_c[None, :])


def _launch_config(n_basis: int, dtype: torch.dtype) -> dict:
    k_pad = max(16, triton.next_power_of_2(n_basis))
    use_dot = dtype == torch.float32
    return dict(BLOCK_E=64 if use_dot else 16, BLOCK_C=32 if use_dot else 16, K_PAD=k_pad, USE_DOT=use_dot)


def evaluate_triton(r: torch.Tensor, weights: torch.Tensor, h: float, order: int) -> torch.Tensor:
    """E_order on CUDA with the Triton kernel (same contract as `evaluate_torch`)."""
    n_basis, n_channels = weights.shape
    out = torch.empty(r.shape[0], n_channels, dtype=weights.dtype, device=weights.device)
    if r.shape[0] == 0:
        return out
    config = _launch_config(n_basis, weights.dtype)
    grid = (triton.cdiv(r.shape[0], config["BLOCK_E"]), triton.cdiv(n_channels, config["BLOCK_C"]))
    _evaluate_kernel[grid](r.contiguous(), weights.contiguous(), out, r.shape[0], n_channels, n_basis,
                           1.0 / h, h**-order, ORDER=order, **config)
    return out


def scatter_triton(r: torch.Tensor, grad: torch.Tensor, h: float, order: int, num_basis: int) -> torch.Tensor:
    """S_order on CUDA with the Triton kernel (same contract as `scatter_torch`)."""
    n_channels = grad.shape[1]
    out = torch.zeros(num_basis, n_channels, dtype=grad.dtype, device=grad.device)
    if r.shape[0] == 0:
        return out
    config = _launch_config(num_basis, grad.dtype)
    n_blocks = triton.cdiv(r.shape[0], config["BLOCK_E"])
    programs = min(n_blocks, 4 * torch.cuda.get_device_properties(grad.device).multi_processor_count)
    grid = (programs, triton.cdiv(n_channels, config["BLOCK_C"]))
    _scatter_kernel[grid](r.contiguous(), grad.contiguous(), out, r.shape[0], n_channels, num_basis,
                          1.0 / h, h**-order, triton.cdiv(n_blocks, programs), ORDER=order, **config)
    return out


# ---- dispatch and autograd ---------------------------------------------------------------


def _use_triton(tensor: torch.Tensor, backend: str) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"spline backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton" and (triton is None or not tensor.is_cuda):
        raise RuntimeError("the triton spline backend needs Triton and a CUDA tensor")
    return backend == "triton" or (backend == "auto" and triton is not None and tensor.is_cuda)


def _evaluate(r, weights, h, order, backend):
    if order > 3:
        return torch.zeros(r.shape[0], weights.shape[1], dtype=weights.dtype, device=weights.device)
    return (evaluate_triton if _use_triton(weights, backend) else evaluate_torch)(r, weights, h, order)


def _scatter(r, grad, h, order, num_basis, backend):
    if order > 3:
        return torch.zeros(num_basis, grad.shape[1], dtype=grad.dtype, device=grad.device)
    return (scatter_triton if _use_triton(grad, backend) else scatter_torch)(r, grad, h, order, num_basis)


class _Evaluate(torch.autograd.Function):
    """E_d(r, W), differentiable to any order through `_Evaluate` and `_Scatter`."""

    @staticmethod
    def forward(ctx, r, weights, h, order, backend):
        ctx.save_for_backward(r, weights)
        ctx.h, ctx.order, ctx.backend = h, order, backend
        return _evaluate(r, weights, h, order, backend)

    @staticmethod
    def backward(ctx, grad):
        r, weights = ctx.saved_tensors
        grad_r = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_r = (grad * _Evaluate.apply(r, weights, ctx.h, ctx.order + 1, ctx.backend)).sum(-1)
        if ctx.needs_input_grad[1]:
            grad_w = _Scatter.apply(r, grad, ctx.h, ctx.order, weights.shape[0], ctx.backend)
        return grad_r, grad_w, None, None, None


class _Scatter(torch.autograd.Function):
    """S_d(r, G) = E_d(r, ·)ᵀ G, differentiable to any order."""

    @staticmethod
    def forward(ctx, r, grad, h, order, num_basis, backend):
        ctx.save_for_backward(r, grad)
        ctx.h, ctx.order, ctx.backend = h, order, backend
        return _scatter(r, grad, h, order, num_basis, backend)

    @staticmethod
    def backward(ctx, grad_out):
        r, grad = ctx.saved_tensors
        grad_r = grad_g = None
        if ctx.needs_input_grad[0]:
            grad_r = (grad * _Evaluate.apply(r, grad_out, ctx.h, ctx.order + 1, ctx.backend)).sum(-1)
        if ctx.needs_input_grad[1]:
            grad_g = _Evaluate.apply(r, grad_out, ctx.h, ctx.order, ctx.backend)
        return grad_r, grad_g, None, None, None, None


def spline_contract(r: torch.Tensor, weights: torch.Tensor, r_max: float, backend: str = "auto") -> torch.Tensor:
    """``Σ_k B_k(r) W[k]`` for distances ``r`` [E] (Å) and weights [K, C] -> [E, C].

    ``backend``: ``"auto"`` (Triton on CUDA when installed, else torch), ``"torch"`` or ``"triton"``.
    Differentiable in both arguments to any order.
    """
    return _Evaluate.apply(r, weights, knot_spacing(weights.shape[0], r_max), 0, backend)
