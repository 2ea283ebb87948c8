"""Compiled kernels: pure functions over arrays (numba, ``cache=True``), threaded across sources.

No repository, no config objects: arrays in, arrays out. Each kernel's slow, obviously-correct
reference lives in ``tests/kernels``. Threads are set in :mod:`forcedphot.threads` only.
"""
