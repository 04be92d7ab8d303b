"""The compiled kernels (Cython over scipy's BLAS, with OpenMP) and their runtime: thread
counts (_threads, _openmp), the weight guard streams read under (_guard). Only
fastrnn.functional calls the cell kernels; the C headers they share are in include/."""
