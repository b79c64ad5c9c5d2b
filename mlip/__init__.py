"""mlip: from public DFT data to fast, trained machine-learning interatomic potentials."""

__version__ = "0.1.0"
