"""Readers: one module per file format, each yielding `Structure` records."""

from mlip.data.readers.extxyz import iter_extxyz, read_extxyz, structure_from_atoms

__all__ = ["iter_extxyz", "read_extxyz", "structure_from_atoms"]
