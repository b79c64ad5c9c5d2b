"""Primary config folder of mlip-md (found by Hydra as a package)."""
