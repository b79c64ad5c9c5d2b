"""Primary config folder of mlip-preprocess (found by Hydra as a package)."""
