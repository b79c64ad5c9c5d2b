"""The edge step of a CP tensor product (TDN) as one fused gather-multiply-sum.

With node projections ``u = x B`` [N, C, R], edge projections ``v = y C`` [E, R] and
radial weights ``w`` [E, P, C] (P paths, rank r belonging to path p(r)), the
messages summed at each receiver are

    out[i, c, r] = Σ_{e: receiver(e) = i} u[sender(e), c, r] · v[e, r] · w[e, p(r), c].

Done in plain torch this writes an [E, C, R] tensor. The kernel instead groups the
edges by receiver (one sort) and sums each node's messages in registers: no [E, C, R]
tensor, no atomics, and the same bits on every run. It is one of three primitives,
each the gradient of one slot of the multilinear form

    T(a, b, v, w) = Σ_e Σ_{c,r} a[ia(e), c, r] · b[ib(e), c, r] · v[e, r] · w[e, p(r), c]:

    to_nodes(b, v, w; ib -> ia)   = ∂T/∂a    [N_a, C, R]   (gather b at ib, scatter to ia)
    to_edges_v(a, b, w; ia, ib)   = ∂T/∂v    [E, R]
    to_edges_w(a, b, v; ia, ib)   = ∂T/∂w    [E, P, C]

Because T is multilinear, the derivative of each primitive is again a primitive (with
the cotangent in the slot it came from), so the autograd functions below are
differentiable to any order: forces and force training need the first two. Each
primitive has a Triton kernel (CUDA) and a pure-torch twin (everywhere).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch twin serves
    triton = None

BACKENDS = ("auto", "torch", "triton")


# ---- pure-torch twin -------------------------------------------------------------------


def _rank_weights(w: torch.Tensor, path: torch.Tensor) -> torch.Tensor:
    """w [E, P, C] -> [E, C, R]: each rank's path weight."""
    return w.index_select(1, path).transpose(1, 2)


def _path_matrix(path: torch.Tensor, num_paths: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.nn.functional.one_hot(path, num_paths).to(dtype)  # [R, P]


def to_nodes_torch(b, v, w, path, ib, ia, num_nodes):
    messages = b.index_select(0, ib) * v[:, None, :] * _rank_weights(w, path)
    return b.new_zeros((num_nodes,) + tuple(b.shape[1:])).index_add(0, ia, messages)


def to_edges_v_torch(a, b, w, path, ia, ib):
    return (a.index_select(0, ia) * b.index_select(0, ib) * _rank_weights(w, path)).sum(1)


def to_edges_w_torch(a, b, v, path, ia, ib, num_paths):
    product = a.index_select(0, ia) * b.index_select(0, ib) * v[:, None, :]  # [E, C, R]
    return (product @ _path_matrix(path, num_paths, a.dtype)).transpose(1, 2)  # [E, P, C]


# ---- Triton kernels --------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _to_nodes_kernel(
        b, v, w, path, ib, order, rowptr, out, C, R, P, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr
    ):
        # one program per (target node, block of flattened (c, r)): it sums the node's edges
        # (order[rowptr[n]:rowptr[n+1]]) in registers and stores once: no atomics, deterministic
        node = tl.program_id(0).to(tl.int64)
        k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = k < C * R
        c, r = k // R, k % R
        p = tl.load(path + r, mask=k_ok, other=0)
        lo = tl.load(rowptr + node)
        hi = tl.load(rowptr + node + 1)
        acc = tl.zeros((BLOCK_K,), dtype=out.dtype.element_ty)
        for j0 in range(lo, hi, BLOCK_E):
            j = j0 + tl.arange(0, BLOCK_E)
            j_ok = j < hi
            e = tl.load(order + j, mask=j_ok, other=0)
            src = tl.load(ib + e, mask=j_ok, other=0)
            mask = j_ok[:, None] & k_ok[None, :]
            bv = tl.load(b + src[:, None] * (C * R) + k[None, :], mask=mask, other=0.0)
            vv = tl.load(v + e[:, None] * R + r[None, :], mask=mask, other=0.0)
            wv = tl.load(w + e[:, None] * (P * C) + p[None, :] * C + c[None, :], mask=mask, other=0.0)
            acc += tl.sum(bv * vv * wv, axis=0)
        tl.store(out + node * (C * R) + k, acc, mask=k_ok)

    @triton.jit
    def _to_edges_v_kernel(a, b, w, path, ia, ib, out, E, C, R, P, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr):
        e = (tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)).to(tl.int64)
        r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
        e_ok, r_ok = e < E, r < R
        mask = e_ok[:, None] & r_ok[None, :]
        ra = tl.load(ia + e, mask=e_ok, other=0)
        rb = tl.load(ib + e, mask=e_ok, other=0)
        p = tl.load(path + r, mask=r_ok, other=0)
        acc = tl.zeros((BLOCK_E, BLOCK_R), dtype=out.dtype.element_ty)
        for c in range(0, C):
            av = tl.load(a + ra[:, None] * (C * R) + c * R + r[None, :], mask=mask, other=0.0)
            bv = tl.load(b + rb[:, None] * (C * R) + c * R + r[None, :], mask=mask, other=0.0)
            wv = tl.load(w + e[:, None] * (P * C) + p[None, :] * C + c, mask=mask, other=0.0)
            acc += av * bv * wv
        tl.store(out + e[:, None] * R + r[None, :], acc, mask=mask)

    @triton.jit
    def _to_edges_w_kernel(
        a, b, v, starts, ia, ib, out, E, C, R, P,
        BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
    ):
        # [edge, channel, rank] tiles, rank fastest so loads of a and b rows are contiguous;
        # the ranks of path p are starts[p]..starts[p+1], summed in chunks of BLOCK_R
        e = (tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)).to(tl.int64)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        e_ok, c_ok = e < E, c < C
        ra = tl.load(ia + e, mask=e_ok, other=0)
        rb = tl.load(ib + e, mask=e_ok, other=0)
        a_rows = (ra * (C * R))[:, None, None] + (c * R)[None, :, None]
        b_rows = (rb * (C * R))[:, None, None] + (c * R)[None, :, None]
        ec_ok = e_ok[:, None, None] & c_ok[None, :, None]
        for p in range(0, P):
            lo = tl.load(starts + p)
            hi = tl.load(starts + p + 1)
            acc = tl.zeros((BLOCK_E, BLOCK_C), dtype=out.dtype.element_ty)
            for r0 in range(lo, hi, BLOCK_R):
                r = r0 + tl.arange(0, BLOCK_R)
                r_ok = r < hi
                mask = ec_ok & r_ok[None, None, :]
                av = tl.load(a + a_rows + r[None, None, :], mask=mask, other=0.0)
                bv = tl.load(b + b_rows + r[None, None, :], mask=mask, other=0.0)
                vv = tl.load(v + e[:, None] * R + r[None, :], mask=e_ok[:, None] & r_ok[None, :], other=0.0)
                acc += tl.sum(av * bv * vv[:, None, :], axis=2)
            tl.store(out + e[:, None] * (P * C) + p * C + c[None, :], acc, mask=e_ok[:, None] & c_ok[None, :])


def _block(n: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(n)))


def to_nodes_triton(b, v, w, path, ib, ia, num_nodes):
    b, v, w = b.contiguous(), v.contiguous(), w.contiguous()
    R, (C, P) = v.shape[1], (b.shape[1], w.shape[1])
    # edges grouped by target node (CSR); sort and searchsorted need no host sync
    targets, order = torch.sort(ia)
    rowptr = torch.searchsorted(targets, torch.arange(num_nodes + 1, device=ia.device))
    out = b.new_empty(num_nodes, C, R)
    block_k = _block(C * R, 128)
    grid = (num_nodes, triton.cdiv(C * R, block_k))
    _to_nodes_kernel[grid](b, v, w, path, ib, order, rowptr, out, C, R, P, BLOCK_E=16, BLOCK_K=block_k)
    return out


def to_edges_v_triton(a, b, w, path, ia, ib):
    a, b, w = a.contiguous(), b.contiguous(), w.contiguous()
    E, (C, R), P = ia.shape[0], a.shape[1:], w.shape[1]
    out = a.new_empty(E, R)
    block_r = _block(R, 64)
    grid = (triton.cdiv(E, 32), triton.cdiv(R, block_r))
    _to_edges_v_kernel[grid](a, b, w, path, ia, ib, out, E, C, R, P, BLOCK_E=32, BLOCK_R=block_r)
    return out


def to_edges_w_triton(a, b, v, path, ia, ib, num_paths):
    a, b, v = a.contiguous(), b.contiguous(), v.contiguous()
    E, (C, R) = ia.shape[0], a.shape[1:]
    # first rank of each path (path is sorted); searchsorted, unlike bincount, needs no host sync
    starts = torch.searchsorted(path, torch.arange(num_paths + 1, device=path.device))
    out = a.new_empty(E, num_paths, C)
    block_c, block_r = _block(C, 16), _block(R, 32)
    grid = (triton.cdiv(E, 8), triton.cdiv(C, block_c))
    _to_edges_w_kernel[grid](
        a, b, v, starts, ia, ib, out, E, C, R, num_paths, BLOCK_E=8, BLOCK_C=block_c, BLOCK_R=block_r
    )
    return out


# ---- autograd: every derivative is another primitive ----------------------------------


def _use_triton(backend: str, x: torch.Tensor) -> bool:
    if backend == "torch":
        return False
    if backend == "triton":
        if triton is None:
            raise ImportError("the triton backend needs Triton (installed with CUDA builds of torch)")
        return True
    return triton is not None and x.is_cuda


class ToNodes(torch.autograd.Function):
    """``out[ia(e)] += b[ib(e)] · v[e] · w[e, p(r)]``: [N_b, C, R] -> [num_nodes, C, R]."""

    @staticmethod
    def forward(ctx, b, v, w, path, ib, ia, num_nodes, backend):
        ctx.save_for_backward(b, v, w, path, ib, ia)
        ctx.backend = backend
        fn = to_nodes_triton if _use_triton(backend, b) else to_nodes_torch
        return fn(b, v, w, path, ib, ia, num_nodes)

    @staticmethod
    def backward(ctx, grad):
        b, v, w, path, ib, ia = ctx.saved_tensors
        need = ctx.needs_input_grad
        backend = ctx.backend
        grad_b = ToNodes.apply(grad, v, w, path, ia, ib, b.shape[0], backend) if need[0] else None
        grad_v = ToEdgesV.apply(grad, b, w, path, ia, ib, backend) if need[1] else None
        grad_w = ToEdgesW.apply(grad, b, v, path, ia, ib, w.shape[1], backend) if need[2] else None
        return grad_b, grad_v, grad_w, None, None, None, None, None


class ToEdgesV(torch.autograd.Function):
    """``out[e, r] = Σ_c a[ia(e)] · b[ib(e)] · w[e, p(r)]``: [E, R]."""

    @staticmethod
    def forward(ctx, a, b, w, path, ia, ib, backend):
        ctx.save_for_backward(a, b, w, path, ia, ib)
        ctx.backend = backend
        fn = to_edges_v_triton if _use_triton(backend, a) else to_edges_v_torch
        return fn(a, b, w, path, ia, ib)

    @staticmethod
    def backward(ctx, grad):
        a, b, w, path, ia, ib = ctx.saved_tensors
        need, backend = ctx.needs_input_grad, ctx.backend
        grad_a = ToNodes.apply(b, grad, w, path, ib, ia, a.shape[0], backend) if need[0] else None
        grad_b = ToNodes.apply(a, grad, w, path, ia, ib, b.shape[0], backend) if need[1] else None
        grad_w = ToEdgesW.apply(a, b, grad, path, ia, ib, w.shape[1], backend) if need[2] else None
        return grad_a, grad_b, grad_w, None, None, None, None


class ToEdgesW(torch.autograd.Function):
    """``out[e, p, c] = Σ_{r in p} a[ia(e)] · b[ib(e)] · v[e, r]``: [E, P, C]."""

    @staticmethod
    def forward(ctx, a, b, v, path, ia, ib, num_paths, backend):
        ctx.save_for_backward(a, b, v, path, ia, ib)
        ctx.backend = backend
        fn = to_edges_w_triton if _use_triton(backend, a) else to_edges_w_torch
        return fn(a, b, v, path, ia, ib, num_paths)

    @staticmethod
    def backward(ctx, grad):
        a, b, v, path, ia, ib = ctx.saved_tensors
        need, backend = ctx.needs_input_grad, ctx.backend
        grad_a = ToNodes.apply(b, v, grad, path, ib, ia, a.shape[0], backend) if need[0] else None
        grad_b = ToNodes.apply(a, v, grad, path, ia, ib, b.shape[0], backend) if need[1] else None
        grad_v = ToEdgesV.apply(a, b, grad, path, ia, ib, backend) if need[2] else None
        return grad_a, grad_b, grad_v, None, None, None, None, None


def cp_messages(
    u: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    path: torch.Tensor,
    sender: torch.Tensor,
    receiver: torch.Tensor,
    num_nodes: int,
    backend: str = "auto",
) -> torch.Tensor:
    """Σ over edges into receivers of ``u[sender] · v · w[path]``: [N, C, R] -> [num_nodes, C, R].

    u [N, C, R] node projections, v [E, R] edge projections, w [E, P, C] path weights,
    path [R] (sorted: the ranks of a path are contiguous). ``backend``: ``"auto"``
    (Triton on CUDA), ``"torch"`` or ``"triton"``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return ToNodes.apply(u, v, w, path, sender, receiver, num_nodes, backend)
