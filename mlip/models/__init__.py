"""Models: each maps species and edge vectors to per-node energies; `Potential` adds the physics."""

from mlip.models.potential import Potential, UnknownElementError

__all__ = ["Potential", "UnknownElementError"]
