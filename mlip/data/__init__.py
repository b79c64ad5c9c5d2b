"""Reading structures, building atomic graphs, statistics and data modules."""

from mlip.data.structure import DataError, Structure

__all__ = ["DataError", "Structure"]
