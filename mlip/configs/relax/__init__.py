"""Primary config folder of mlip-relax (found by Hydra as a package)."""
