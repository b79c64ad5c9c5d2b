"""The packed store: sharded HDF5 files written by `write_store`, read by `StoreDataset`."""

from mlip.data.store.dataset import StoreDataset, verify_store
from mlip.data.store.writer import write_store

__all__ = ["StoreDataset", "verify_store", "write_store"]
