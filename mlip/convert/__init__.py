"""Models of other frameworks read into ours: `mace_torch` (mace-torch ``.model`` files),
through `pickled_module` (a torch.save archive read as inert records, no code run)."""
