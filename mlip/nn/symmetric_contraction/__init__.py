"""MACE's higher-order product (Batatia et al. 2022, Eq. 10), in one place:

- `basis`: what it computes. An orthonormal basis of the symmetric equivariant maps
  ``Sym^ν(irreps) -> L`` (`product_basis`), the Clebsch-Gordan coupling chains as a tight
  frame over it (`coupling_frame`, mace-torch's parametrisation), and the basis folded onto
  sorted multi-indices (`compress_symmetric`);
- `contraction`: the layer, `SymmetricContraction` (element-dependent weights, buffers);
- two executors that evaluate the layer on the same weights: `torch_executor` (torch,
  any device: the reference) and `cueq_executor` (cuequivariance's fused CUDA kernels,
  through a change of basis probed once and cached on disk).
"""

from mlip.nn.symmetric_contraction.basis import compress_symmetric, coupling_frame, product_basis
from mlip.nn.symmetric_contraction.contraction import SymmetricContraction

__all__ = ["SymmetricContraction", "compress_symmetric", "coupling_frame", "product_basis"]
