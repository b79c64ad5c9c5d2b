"""An activation on the sphere as one fused op: sample, apply σ at every grid point, project back.

Between its first and last linears, Facet's grid MLP (`mlip.nn.grid_mlp`, one hidden layer)
computes for every node and hidden channel

    Q(y) = M_outᵀ σ(M_in y),     M_in = Sᵀ [G, D] (sampling), M_out = P [G, D'] (quadrature),

with y [D, H] per node and σ pointwise at the G grid points. Q and all of its derivatives are
one primitive: each coefficient space s ∈ {in, out} has its matrix M_s [G, D_s], and

    Φ_k(y; u_1..u_F; s_1..s_F; s) = M_sᵀ [σ^(k)(M_in y) ⊙ Π_i M_{s_i} u_i]          ([n, D_s, H])

gives Q = Φ_0(y; ; ; out). With upstream gradient w (in space s),

    ∂Φ/∂y   = Φ_{k+1}(y; u.., w; s.., s; in)
    ∂Φ/∂u_j = Φ_k(y; u.. without u_j, w; s.. without s_j, s; s_j),

so derivatives of any order are again Φ (σ = `NormalizedSiLU`, whose derivatives are written out
to the fourth: force training needs the second). The Triton kernel computes Φ for one node and a
tile of channels in registers, looping over the grid in chunks: nothing of size G is written,
forward or backward (each backward recomputes σ^(k)(M_in y)). The pure-torch twin (everywhere,
and the reference of the kernel's tests) writes the [n, G, H] tables.
"""

from __future__ import annotations

import torch

from mlip.nn.radial import NormalizedSiLU

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch twin serves
    triton = None

BACKENDS = ("auto", "torch", "triton")
MAX_ORDER = 4  # σ^(k) is written out to k = 4
MAX_FACTORS = 3  # the kernel's factors (derivatives up to the third of Q); more take the torch twin
SCALE = NormalizedSiLU.SCALE


# ---- pure-torch twin -------------------------------------------------------------------


def silu_derivative(x: torch.Tensor, order: int) -> torch.Tensor:
    """The ``order``-th derivative of SCALE · silu at ``x``: k s^(k-1) + x s^(k), s the sigmoid."""
    s0 = torch.sigmoid(x)
    s = [s0]  # the sigmoid's derivatives, each from the ones before
    if order >= 1:
        s.append(s0 * (1 - s0))
    if order >= 2:
        s.append(s[1] * (1 - 2 * s0))
    if order >= 3:
        s.append(s[2] * (1 - 2 * s0) - 2 * s[1] ** 2)
    if order >= 4:
        s.append(s[3] * (1 - 2 * s0) - 6 * s[1] * s[2])
    value = x * s0 if order == 0 else order * s[order - 1] + x * s[order]
    return SCALE * value


def phi_torch(y: torch.Tensor, factors: tuple[torch.Tensor, ...], matrices: tuple[torch.Tensor, ...],
              m_in: torch.Tensor, m_out: torch.Tensor, order: int) -> torch.Tensor:
    """Φ_order: y [n, D, H], factors u_i [n, D_i, H] with their matrices [G, D_i], M_in [G, D],
    M_s [G, D_s] of the output space -> [n, D_s, H]."""
    t = silu_derivative(torch.matmul(m_in, y), order)  # [n, G, H]
    for u, m in zip(factors, matrices):
        t = t * torch.matmul(m, u)
    return torch.matmul(m_out.T, t)


# ---- Triton kernel -----------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _sigmoid_derivatives(x, ORDER: tl.constexpr):
        """SCALE-free σ^(ORDER)(x) of silu, from the sigmoid's derivatives (as `silu_derivative`)."""
        s0 = 1.0 / (1.0 + tl.exp(-x))
        if ORDER == 0:
            out = x * s0
        else:
            s1 = s0 * (1 - s0)
            if ORDER == 1:
                out = s0 + x * s1
            else:
                s2 = s1 * (1 - 2 * s0)
                if ORDER == 2:
                    out = 2 * s1 + x * s2
                else:
                    s3 = s2 * (1 - 2 * s0) - 2 * s1 * s1
                    if ORDER == 3:
                        out = 3 * s2 + x * s3
                    else:
                        s4 = s3 * (1 - 2 * s0) - 6 * s1 * s2
                        out = 4 * s3 + x * s4
        return out

    @triton.jit
    def _load_coefficients(ptr, node, dim, offs_d, offs_h, mask_h, n_channels):
        """[D_PAD, BLOCK_H] of one node's [dim, H] coefficients (zero past ``dim``)."""
        rows = ptr + node * dim * n_channels + offs_d[:, None] * n_channels + offs_h[None, :]
        return tl.load(rows, mask=(offs_d[:, None] < dim) & mask_h[None, :], other=0.0)

    @triton.jit
    def _on_grid(m_ptr, dim, offs_g, mask_g, offs_d, coefficients):
        """[BLOCK_G, BLOCK_H] = M[g chunk, :dim] @ coefficients."""
        m = tl.load(m_ptr + offs_g[:, None] * dim + offs_d[None, :],
                    mask=mask_g[:, None] & (offs_d[None, :] < dim), other=0.0)
        return tl.dot(m, coefficients, input_precision="ieee")

    @triton.jit
    def _phi_kernel(
        y_ptr, m_in_ptr, u1_ptr, m1_ptr, u2_ptr, m2_ptr, u3_ptr, m3_ptr, m_out_ptr, out_ptr, scale_ptr,
        n_channels, d_in, d1, d2, d3, d_out,
        N_POINTS: tl.constexpr, ORDER: tl.constexpr, NUM_FACTORS: tl.constexpr, D_PAD: tl.constexpr, BLOCK_G: tl.constexpr,
        BLOCK_H: tl.constexpr,
    ):
        node = tl.program_id(0)
        offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        mask_h = offs_h < n_channels
        offs_d = tl.arange(0, D_PAD)
        y = _load_coefficients(y_ptr, node, d_in, offs_d, offs_h, mask_h, n_channels)
        if NUM_FACTORS >= 1:
            u1 = _load_coefficients(u1_ptr, node, d1, offs_d, offs_h, mask_h, n_channels)
        if NUM_FACTORS >= 2:
            u2 = _load_coefficients(u2_ptr, node, d2, offs_d, offs_h, mask_h, n_channels)
        if NUM_FACTORS >= 3:
            u3 = _load_coefficients(u3_ptr, node, d3, offs_d, offs_h, mask_h, n_channels)
        scale = tl.load(scale_ptr)
        acc = tl.zeros((D_PAD, BLOCK_H), dtype=y.dtype)
        for g0 in range(0, N_POINTS, BLOCK_G):
            offs_g = g0 + tl.arange(0, BLOCK_G)
            mask_g = offs_g < N_POINTS
            t = scale * _sigmoid_derivatives(_on_grid(m_in_ptr, d_in, offs_g, mask_g, offs_d, y), ORDER)
            if NUM_FACTORS >= 1:
                t = t * _on_grid(m1_ptr, d1, offs_g, mask_g, offs_d, u1)
            if NUM_FACTORS >= 2:
                t = t * _on_grid(m2_ptr, d2, offs_g, mask_g, offs_d, u2)
            if NUM_FACTORS >= 3:
                t = t * _on_grid(m3_ptr, d3, offs_g, mask_g, offs_d, u3)
            # M_outᵀ of the chunk: [D_PAD, BLOCK_G]; rows past the grid are zero, so padding adds nothing
            m_out = tl.load(m_out_ptr + offs_g[None, :] * d_out + offs_d[:, None],
                            mask=mask_g[None, :] & (offs_d[:, None] < d_out), other=0.0)
            acc += tl.dot(m_out, t, input_precision="ieee")
        rows = out_ptr + node * d_out * n_channels + offs_d[:, None] * n_channels + offs_h[None, :]
        tl.store(rows, acc, mask=(offs_d[:, None] < d_out) & mask_h[None, :])


_SCALES: dict[tuple, torch.Tensor] = {}


def _scale(like: torch.Tensor) -> torch.Tensor:
    """SCALE as a tensor on ``like``'s device and dtype (a float would reach the kernel as fp32),
    made once per device and dtype: a call under CUDA-graph capture cannot copy from the host."""
    key = (like.device, like.dtype)
    if key not in _SCALES:
        _SCALES[key] = torch.tensor([SCALE], dtype=like.dtype, device=like.device)
    return _SCALES[key]


def phi_triton(y: torch.Tensor, factors: tuple[torch.Tensor, ...], matrices: tuple[torch.Tensor, ...],
               m_in: torch.Tensor, m_out: torch.Tensor, order: int) -> torch.Tensor:
    """Φ_order with the Triton kernel (same contract as `phi_torch`; at most `MAX_FACTORS` factors)."""
    n, d_in, n_channels = y.shape
    d_out = m_out.shape[1]
    out = torch.empty(n, d_out, n_channels, dtype=y.dtype, device=y.device)
    if n == 0:
        return out
    dims = [d_in, d_out, *(m.shape[1] for m in matrices)]
    padded = [*(f.contiguous() for f in factors), *([y] * (MAX_FACTORS - len(factors)))]
    mats = [*(m.contiguous() for m in matrices), *([m_in] * (MAX_FACTORS - len(matrices)))]
    sizes = [*(m.shape[1] for m in matrices), *([d_in] * (MAX_FACTORS - len(matrices)))]
    block_h = min(64, max(16, triton.next_power_of_2(n_channels)))
    grid = (n, triton.cdiv(n_channels, block_h))
    _phi_kernel[grid](
        y.contiguous(), m_in.contiguous(), padded[0], mats[0], padded[1], mats[1], padded[2], mats[2],
        m_out.contiguous(), out, _scale(y), n_channels, d_in, *sizes, d_out,
        N_POINTS=m_in.shape[0], ORDER=order, NUM_FACTORS=len(factors), D_PAD=max(16, triton.next_power_of_2(max(dims))),
        BLOCK_G=32, BLOCK_H=block_h,
    )
    return out


# ---- dispatch and autograd ---------------------------------------------------------------


def _use_triton(tensor: torch.Tensor, backend: str, num_factors: int) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"grid activation backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton" and (triton is None or not tensor.is_cuda):
        raise RuntimeError("the triton grid-activation backend needs Triton and a CUDA tensor")
    return backend != "torch" and triton is not None and tensor.is_cuda and num_factors <= MAX_FACTORS


class _Phi(torch.autograd.Function):
    """Φ_k(y; factors; their spaces; out space), differentiable through itself (module docstring)."""

    @staticmethod
    def forward(ctx, y, m_in, m_out_space, order, spaces, out_space, backend, *factors):
        if order > MAX_ORDER:
            raise NotImplementedError(f"derivatives of σ beyond order {MAX_ORDER} are not written out")
        matrices = {"in": m_in, "out": m_out_space}
        ctx.save_for_backward(y, m_in, m_out_space, *factors)
        ctx.order, ctx.spaces, ctx.out_space, ctx.backend = order, spaces, out_space, backend
        function = phi_triton if _use_triton(y, backend, len(factors)) else phi_torch
        return function(y, factors, tuple(matrices[s] for s in spaces), m_in, matrices[out_space], order)

    @staticmethod
    def backward(ctx, grad):
        y, m_in, m_out, *factors = ctx.saved_tensors
        spaces = ctx.spaces
        grads = [None] * (7 + len(factors))
        if ctx.needs_input_grad[0]:
            grads[0] = _Phi.apply(y, m_in, m_out, ctx.order + 1, (*spaces, ctx.out_space), "in", ctx.backend,
                                  *factors, grad)
        for j in range(len(factors)):
            if ctx.needs_input_grad[7 + j]:
                rest = factors[:j] + factors[j + 1:]
                grads[7 + j] = _Phi.apply(y, m_in, m_out, ctx.order, (*spaces[:j], *spaces[j + 1:], ctx.out_space),
                                          spaces[j], ctx.backend, *rest, grad)
        return tuple(grads)


def grid_activation(y: torch.Tensor, sample: torch.Tensor, project: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """``P[σ(S[y])]`` per node and channel: y [n, D, H] coefficients, ``sample`` [D, G] and
    ``project`` [G, D'] (`mlip.nn.spherical.SphericalGrid`) -> [n, D', H]. σ = `NormalizedSiLU`.

    ``backend``: ``"auto"`` (the Triton kernel on CUDA when installed, else torch), ``"torch"``
    or ``"triton"``. Differentiable in ``y`` to any order (the grid matrices are constants).
    """
    return _Phi.apply(y, sample.T, project, 0, (), "out", backend)
