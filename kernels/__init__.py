"""Triton kernels of the STAA-LIF recurrence, shipped as ``staa.kernels``.

Importing this package does not import triton; the launchers do, on first use.
"""
HAS_KERNELS = True
