"""GPU kernels (Triton) beside their pure-torch twins; each public op picks one by device."""
