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
``∂S_d/∂r = ⟨G, E_{d+1}(·)⟩``. A third, fused primitive serves the r-derivatives,

    P_d(r, W, G)[e] = Σ_c G[e, c] E_d(r, W)[e, c]                  ([E], E_d never written)

and the autograd functions below express every backward through these three, so
derivatives of any order exist (zero from d = 4). Each primitive has a Triton kernel
(CUDA) and a pure-torch twin (everywhere): evaluate and project gather the four
weight rows an edge needs; scatter builds the [block, K] basis tile in registers and
contracts it with one atomic add per program and tile. Tile sizes of the first two
are tuned per (channels, knots) on first use (Triton's autotuner).
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


def project_torch(r: torch.Tensor, weights: torch.Tensor, grad: torch.Tensor, h: float, order: int) -> torch.Tensor:
    """P_order(r, W, G) = Σ_c G ⊙ E_order(r, W): [E]."""
    return (grad * evaluate_torch(r, weights, h, order)).sum(-1)


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
    def _blend(r, params_ptr, num_intervals, ORDER: tl.constexpr):
        """Interval index i and the four blending values β_m^(ORDER)(u) · h^-ORDER of each r.

        ``params_ptr`` holds (1/h, h^-ORDER) in the data's dtype: Python floats would
        reach the kernel as float32 and cost float64 its precision.
        """
        inv_h = tl.load(params_ptr)
        scale = tl.load(params_ptr + 1)
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
        return i.to(tl.int32), b0 * scale, b1 * scale, b2 * scale, b3 * scale

    @triton.jit
    def _combine(w_ptr, i, b0, b1, b2, b3, offs_c, mask, n_channels):
        """[BLOCK_E, BLOCK_C] Σ_m β_m W[i + m, c], gathering four rows of the (cache-resident) weights."""
        row = w_ptr + i[:, None] * n_channels + offs_c[None, :]
        out = b0[:, None] * tl.load(row, mask=mask, other=0.0)
        out += b1[:, None] * tl.load(row + n_channels, mask=mask, other=0.0)
        out += b2[:, None] * tl.load(row + 2 * n_channels, mask=mask, other=0.0)
        out += b3[:, None] * tl.load(row + 3 * n_channels, mask=mask, other=0.0)
        return out

    _TILES = [
        triton.Config({"BLOCK_E": e, "BLOCK_C": c}, num_warps=w)
        for e, c, w in ((32, 32, 4), (64, 32, 4), (32, 64, 4), (64, 64, 4), (128, 32, 4), (32, 128, 4), (64, 128, 8))
    ]

    @triton.autotune(configs=_TILES, key=["n_channels", "n_basis"])
    @triton.jit
    def _evaluate_kernel(
        r_ptr, w_ptr, params_ptr, out_ptr, n_edges, n_channels, n_basis,
        ORDER: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        offs_e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
        offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = (offs_e < n_edges)[:, None] & (offs_c < n_channels)[None, :]
        r = tl.load(r_ptr + offs_e, mask=offs_e < n_edges, other=0.0)
        i, b0, b1, b2, b3 = _blend(r, params_ptr, n_basis - 3.0, ORDER)
        out = _combine(w_ptr, i, b0, b1, b2, b3, offs_c, mask, n_channels)
        tl.store(out_ptr + offs_e[:, None] * n_channels + offs_c[None, :], out, mask=mask)

    @triton.autotune(configs=_TILES, key=["n_channels", "n_basis"])
    @triton.jit
    def _project_kernel(
        r_ptr, w_ptr, g_ptr, params_ptr, out_ptr, n_edges, n_channels, n_basis,
        ORDER: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """out[e] = Σ_c G[e, c] E_ORDER(r, W)[e, c], without writing E_ORDER."""
        offs_e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
        mask_e = offs_e < n_edges
        r = tl.load(r_ptr + offs_e, mask=mask_e, other=0.0)
        i, b0, b1, b2, b3 = _blend(r, params_ptr, n_basis - 3.0, ORDER)
        acc = tl.zeros((BLOCK_E,), dtype=r.dtype)
        for c0 in range(0, n_channels, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            mask = mask_e[:, None] & (offs_c < n_channels)[None, :]
            values = _combine(w_ptr, i, b0, b1, b2, b3, offs_c, mask, n_channels)
            g = tl.load(g_ptr + offs_e[:, None] * n_channels + offs_c[None, :], mask=mask, other=0.0)
            acc += tl.sum(values * g, axis=1)
        tl.store(out_ptr + offs_e, acc, mask=mask_e)

    @triton.jit
    def _scatter_kernel(
        r_ptr, g_ptr, params_ptr, out_ptr, n_edges, n_channels, n_basis, blocks_per_program,
        ORDER: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr, K_PAD: tl.constexpr, USE_DOT: tl.constexpr,
    ):
        """out[k, c] += Σ_e A[e, k] G[e, c] over a run of edge blocks, one atomic add per program."""
        offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        offs_k = tl.arange(0, K_PAD)
        mask_c = offs_c < n_channels
        acc = tl.zeros((K_PAD, BLOCK_C), dtype=g_ptr.dtype.element_ty)
        for j in range(0, blocks_per_program):  # edge blocks pid, pid + P, pid + 2P, ...
            offs_e = (tl.program_id(0) + j * tl.num_programs(0)) * BLOCK_E + tl.arange(0, BLOCK_E)
            mask_e = offs_e < n_edges
            r = tl.load(r_ptr + offs_e, mask=mask_e, other=0.0)
            i, b0, b1, b2, b3 = _blend(r, params_ptr, n_basis - 3.0, ORDER)
            rel = offs_k[None, :] - i[:, None]  # the dense [BLOCK_E, K_PAD] basis tile
            tile = tl.where(rel == 0, b0[:, None], 0.0)
            tile = tl.where(rel == 1, b1[:, None], tile)
            tile = tl.where(rel == 2, b2[:, None], tile)
            tile = tl.where(rel == 3, b3[:, None], tile)
            tile = tl.where(mask_e[:, None], tile, 0.0).to(acc.dtype)
            g = tl.load(g_ptr + offs_e[:, None] * n_channels + offs_c[None, :],
                        mask=mask_e[:, None] & mask_c[None, :], other=0.0)
            if USE_DOT:
                acc += tl.dot(tl.trans(tile), g, input_precision="ieee")
            else:
                acc += tl.sum(tile[:, :, None] * g[:, None, :], axis=0)
        tl.atomic_add(out_ptr + offs_k[:, None] * n_channels + offs_c[None, :], acc,
                      mask=(offs_k[:, None] < n_basis) & mask_c[None, :])


_PARAMS: dict[tuple, torch.Tensor] = {}


def _params(h: float, order: int, like: torch.Tensor) -> torch.Tensor:
    """[1/h, h^-order] on ``like``'s device and dtype (a tensor: Triton would pass a float as
    fp32). Kept per key, so that a call under CUDA-graph capture, which cannot copy from
    the host, finds the tensor its warm-up made."""
    key = (h, order, like.dtype, like.device)
    if key not in _PARAMS:
        _PARAMS[key] = torch.tensor([1.0 / h, h**-order], dtype=like.dtype, device=like.device)
    return _PARAMS[key]


def evaluate_triton(r: torch.Tensor, weights: torch.Tensor, h: float, order: int) -> torch.Tensor:
    """E_order on CUDA with the Triton kernel (same contract as `evaluate_torch`)."""
    n_basis, n_channels = weights.shape
    out = torch.empty(r.shape[0], n_channels, dtype=weights.dtype, device=weights.device)
    if r.shape[0] == 0:
        return out
    def grid(meta):
        return triton.cdiv(r.shape[0], meta["BLOCK_E"]), triton.cdiv(n_channels, meta["BLOCK_C"])

    _evaluate_kernel[grid](r.contiguous(), weights.contiguous(), _params(h, order, weights), out, r.shape[0],
                           n_channels, n_basis, ORDER=order)
    return out


def project_triton(r: torch.Tensor, weights: torch.Tensor, grad: torch.Tensor, h: float, order: int) -> torch.Tensor:
    """P_order = Σ_c G ⊙ E_order(r, W) on CUDA, [E] (same contract as `project_torch`)."""
    n_basis, n_channels = weights.shape
    out = torch.empty(r.shape[0], dtype=weights.dtype, device=weights.device)
    if r.shape[0] == 0:
        return out
    def grid(meta):
        return (triton.cdiv(r.shape[0], meta["BLOCK_E"]),)

    _project_kernel[grid](r.contiguous(), weights.contiguous(), grad.contiguous(), _params(h, order, weights), out,
                          r.shape[0], n_channels, n_basis, ORDER=order)
    return out


def scatter_triton(r: torch.Tensor, grad: torch.Tensor, h: float, order: int, num_basis: int) -> torch.Tensor:
    """S_order on CUDA with the Triton kernel (same contract as `scatter_torch`)."""
    n_channels = grad.shape[1]
    out = torch.zeros(num_basis, n_channels, dtype=grad.dtype, device=grad.device)
    if r.shape[0] == 0:
        return out
    use_dot = grad.dtype in (torch.float32, torch.float64)  # tensor-core dot (IEEE precision); sums otherwise
    block_e, block_c = (64, 32) if use_dot else (16, 16)
    n_blocks = triton.cdiv(r.shape[0], block_e)
    programs = min(n_blocks, 4 * torch.cuda.get_device_properties(grad.device).multi_processor_count)
    grid = (programs, triton.cdiv(n_channels, block_c))
    _scatter_kernel[grid](r.contiguous(), grad.contiguous(), _params(h, order, grad), out, r.shape[0], n_channels,
                          num_basis, triton.cdiv(n_blocks, programs), ORDER=order, BLOCK_E=block_e, BLOCK_C=block_c,
                          K_PAD=max(16, triton.next_power_of_2(num_basis)), USE_DOT=use_dot)
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


def _project(r, weights, grad, h, order, backend):
    if order > 3:
        return torch.zeros(r.shape[0], dtype=weights.dtype, device=weights.device)
    return (project_triton if _use_triton(weights, backend) else project_torch)(r, weights, grad, h, order)


def _scatter(r, grad, h, order, num_basis, backend):
    if order > 3:
        return torch.zeros(num_basis, grad.shape[1], dtype=grad.dtype, device=grad.device)
    return (scatter_triton if _use_triton(grad, backend) else scatter_torch)(r, grad, h, order, num_basis)


class _Evaluate(torch.autograd.Function):
    """E_d(r, W) [E, C]: ∂/∂r → P_{d+1}(r, W, grad), ∂/∂W → S_d(r, grad)."""

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
            grad_r = _Project.apply(r, weights, grad, ctx.h, ctx.order + 1, ctx.backend)
        if ctx.needs_input_grad[1]:
            grad_w = _Scatter.apply(r, grad, ctx.h, ctx.order, weights.shape[0], ctx.backend)
        return grad_r, grad_w, None, None, None


class _Project(torch.autograd.Function):
    """P_d(r, W, G) = Σ_c G ⊙ E_d(r, W) [E]: one pass, E_d never written."""

    @staticmethod
    def forward(ctx, r, weights, grad, h, order, backend):
        ctx.save_for_backward(r, weights, grad)
        ctx.h, ctx.order, ctx.backend = h, order, backend
        return _project(r, weights, grad, h, order, backend)

    @staticmethod
    def backward(ctx, grad_out):
        r, weights, grad = ctx.saved_tensors
        grad_r = grad_w = grad_g = None
        if ctx.needs_input_grad[0]:
            grad_r = grad_out * _Project.apply(r, weights, grad, ctx.h, ctx.order + 1, ctx.backend)
        if ctx.needs_input_grad[1]:
            grad_w = _Scatter.apply(r, grad_out[:, None] * grad, ctx.h, ctx.order, weights.shape[0], ctx.backend)
        if ctx.needs_input_grad[2]:
            grad_g = grad_out[:, None] * _Evaluate.apply(r, weights, ctx.h, ctx.order, ctx.backend)
        return grad_r, grad_w, grad_g, None, None, None


class _Scatter(torch.autograd.Function):
    """S_d(r, G) = E_d(r, ·)ᵀ G [K, C]: ∂/∂r → P_{d+1}(r, grad_out, G), ∂/∂G → E_d(r, grad_out)."""

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
            grad_r = _Project.apply(r, grad_out, grad, ctx.h, ctx.order + 1, ctx.backend)
        if ctx.needs_input_grad[1]:
            grad_g = _Evaluate.apply(r, grad_out, ctx.h, ctx.order, ctx.backend)
        return grad_r, grad_g, None, None, None, None


def spline_contract(r: torch.Tensor, weights: torch.Tensor, r_max: float, backend: str = "auto") -> torch.Tensor:
    """``Σ_k B_k(r) W[k]`` for distances ``r`` [E] (Å) and weights [K, C] -> [E, C].

    ``backend``: ``"auto"`` (Triton on CUDA when installed, else torch), ``"torch"`` or ``"triton"``.
    Differentiable in both arguments to any order.
    """
    return _Evaluate.apply(r, weights, knot_spacing(weights.shape[0], r_max), 0, backend)
