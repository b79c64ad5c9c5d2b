"""Layers shared by every model: radial bases, symmetric contraction, MACE-style blocks."""
