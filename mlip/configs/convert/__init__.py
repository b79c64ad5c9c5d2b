"""Primary config folder of mlip-convert (found by Hydra as a package)."""
