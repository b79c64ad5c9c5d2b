"""Using a trained potential: relaxations (one by one through ASE, or batched FIRE on the
GPU) and molecular dynamics through ASE's integrators."""
