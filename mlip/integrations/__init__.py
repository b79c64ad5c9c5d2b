"""Couplings to other simulation programs (optional extras): `torchsim` (torch-sim)."""
