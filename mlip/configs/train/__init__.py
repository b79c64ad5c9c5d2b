"""Primary config folder of mlip-train (found by Hydra as a package)."""
