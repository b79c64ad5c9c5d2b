"""Model names -> classes, so that a config or a model file names a model without executing code.

A model file stores ``{"target": "mlip.models.mace.MACE", "kwargs": {...}}``; loading
looks the target up here instead of importing arbitrary paths.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mlip.models.escaip import EScAIP
from mlip.models.facet import Facet
from mlip.models.mace import MACE
from mlip.models.tdn import TDN

MODELS: dict[str, type[nn.Module]] = {
    "mlip.models.mace.MACE": MACE,
    "mlip.models.tdn.TDN": TDN,
    "mlip.models.facet.Facet": Facet,
    "mlip.models.escaip.EScAIP": EScAIP,
}


def model_class(target: str) -> type[nn.Module]:
    if target not in MODELS:
        raise KeyError(f"unknown model {target!r}; known models: {', '.join(MODELS)}")
    return MODELS[target]


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build a model from ``{"target": <registered class path>, "kwargs": {...}}``."""
    return model_class(spec["target"])(**spec["kwargs"])

