"""Compiled kernels: pure functions over arrays (numba, ``cache=True``), threaded across sources.

No repository, no config objects: arrays in, arrays out. A kernel module imports numpy, numba,
scipy and other kernel modules only, nothing above it (``tests/test_imports.py`` checks). Each
kernel's slow, obviously-correct reference lives in ``tests/kernels``. Threads are set in :mod:`forcedphot.threads` only.
"""
