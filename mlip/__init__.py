"""mlip (distribution mlip-forge): from public DFT data to fast, trained machine-learning interatomic potentials."""

__version__ = "0.1.0"


def _warn_on_namesake() -> None:
    """`pip install mlip` is another project (a JAX library) that also imports as ``mlip``; both in
    one environment overwrite each other's files. Ours is the distribution ``mlip-forge``."""
    from importlib import metadata

    try:
        metadata.distribution("mlip")
    except metadata.PackageNotFoundError:
        return
    import warnings

    warnings.warn(
        "the distribution 'mlip' (another project that also imports as `mlip`) is installed beside "
        "'mlip-forge'; they overwrite each other's files: `pip uninstall mlip` and reinstall mlip-forge",
        stacklevel=2,
    )


_warn_on_namesake()
