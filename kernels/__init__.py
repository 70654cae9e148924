"""Triton kernels, installed as ``spatialseg_fast.kernels``.

Imported lazily by the op dispatchers (never by ``import spatialseg_fast``), so the package works
without Triton. On the CPU they run only under ``TRITON_INTERPRET=1`` (the tests do this).
"""
