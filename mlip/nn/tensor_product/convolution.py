"""The channel-wise ('uvu') tensor product of MACE Eq. 8, summed over the edges into each receiver.

    out_i = Σ_{j ∈ N(i)} h_j ⊗_w Y(r̂_ij),   w = w_ij [E, weight_numel] from the radial network

Each channel of ``h_j`` couples with the edge harmonics along every path whose output
irrep is kept, with its own per-edge weight.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from mlip.nn.scatter import scatter_sum
from mlip.nn.tensor_product.backend import check_backend, uses_cueq

try:
    import cuequivariance as cue
    import cuequivariance_torch as cuet
except ImportError:  # the e3nn backend serves
    cue = cuet = None


def channelwise_instructions(
    irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_target: o3.Irreps
) -> tuple[o3.Irreps, list[tuple[int, int, int, str, bool]]]:
    """Output irreps (sorted) and e3nn 'uvu' instructions of the paths whose output is in the target."""
    irreps_mid, instructions = [], []
    for i, (mul, ir_in) in enumerate(irreps_in):
        for j, (_, ir_sh) in enumerate(irreps_sh):
            for ir_out in ir_in * ir_sh:
                if ir_out in irreps_target:
                    instructions.append((i, j, len(irreps_mid), "uvu", True))
                    irreps_mid.append((mul, ir_out))
    irreps_mid, permutation, _ = o3.Irreps(irreps_mid).sort()
    instructions = [(i, j, permutation[k], mode, train) for i, j, k, mode, train in instructions]
    return irreps_mid, instructions


class ChannelwiseConvolution(nn.Module):
    """Σ over edges of the channel-wise tensor product, with external per-edge weights.

    Args:
        irreps_in: node feature irreps (all with the same multiplicity).
        irreps_sh: edge spherical-harmonic irreps.
        irreps_target: which output irreps to keep.
        backend: one of `TP_BACKENDS`.
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_target: o3.Irreps, backend: str = "auto"):
        super().__init__()
        self.backend = check_backend(backend)
        self.irreps_in, self.irreps_sh = o3.Irreps(irreps_in), o3.Irreps(irreps_sh)
        self.irreps_out, self.instructions = channelwise_instructions(self.irreps_in, self.irreps_sh, o3.Irreps(irreps_target))
        self.tensor_product = o3.TensorProduct(
            self.irreps_in, self.irreps_sh, self.irreps_out, self.instructions, shared_weights=False, internal_weights=False
        )
        self.weight_numel = self.tensor_product.weight_numel
        # cuequivariance orders its paths by output slot; e3nn (our layout) by instruction
        mul = self.irreps_in[0].mul
        order = sorted(range(len(self.instructions)), key=lambda p: self.instructions[p][2])
        columns = [p * mul + c for p in order for c in range(mul)]
        self.register_buffer("_cueq_columns", torch.tensor(columns, dtype=torch.long), persistent=False)
        self.__dict__["_cueq"] = None  # built on first use, kept out of the state dict

    def _cueq_module(self, x: torch.Tensor):
        module = self.__dict__["_cueq"]
        if module is None or module.device != x.device or module.dtype != x.dtype:
            module = cuet.ChannelWiseTensorProduct(
                cue.Irreps("O3", str(self.irreps_in)),
                cue.Irreps("O3", str(self.irreps_sh)),
                [cue.O3(ir.l, ir.p) for _, ir in self.irreps_out],
                layout=cue.mul_ir,
                shared_weights=False,
                internal_weights=False,
                device=x.device,
                dtype=x.dtype,
                method=None if x.is_cuda else "naive",  # None: its CUDA kernel where the segments allow
            )
            module.device, module.dtype = x.device, x.dtype
            self.__dict__["_cueq"] = module
        return module

    def weight_order(self, x: torch.Tensor) -> torch.Tensor | None:
        """Column order of the weights that the backend serving ``x`` reads (None: e3nn's own).

        A radial network can emit its columns in this order (`RadialMLP`'s ``output_order``)
        instead of the convolution permuting an [E, weight_numel] tensor (memory, not time).
        """
        return self._cueq_columns if uses_cueq(self.backend, x) else None

    def forward(
        self,
        node_feats: torch.Tensor,
        edge_sh: torch.Tensor,
        weights: torch.Tensor,
        sender: torch.Tensor,
        receiver: torch.Tensor,
        num_nodes: int,
        weights_ordered: bool = False,
    ) -> torch.Tensor:
        """[n, irreps_in.dim], [E, irreps_sh.dim], [E, weight_numel] -> [num_nodes, irreps_out.dim].

        ``weights`` are in e3nn's instruction order, or already in `weight_order` when
        ``weights_ordered``.
        """
        if uses_cueq(self.backend, node_feats):
            if not weights_ordered:
                weights = weights.index_select(1, self._cueq_columns)
            return self.forward_cueq(node_feats, edge_sh, weights, sender, receiver, num_nodes)
        messages = self.tensor_product(node_feats.index_select(0, sender), edge_sh, weights)
        return scatter_sum(messages, receiver, num_nodes)

    def forward_cueq(self, node_feats, edge_sh, weights, sender, receiver, num_nodes) -> torch.Tensor:
        """The cuequivariance path (fused gather, tensor product and sum at receivers), on any device.

        ``weights`` in cuequivariance's column order (`weight_order`).
        """
        module = self._cueq_module(node_feats)
        # module.forward would make its output-shape tensor on the CPU and copy it over, which a
        # CUDA graph cannot capture: call its polynomial with one made on the device instead
        output = module.f(
            [weights, module.transpose_in1(node_feats), module.transpose_in2(edge_sh)],
            input_indices={1: sender},
            output_shapes={0: node_feats.new_empty(num_nodes, 1)},
            output_indices={0: receiver},
        )
        return module.transpose_out(output[0])
