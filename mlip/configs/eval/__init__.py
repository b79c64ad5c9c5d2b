"""Primary config folder of mlip-eval (found by Hydra as a package)."""
