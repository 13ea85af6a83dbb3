"""Fused Triton kernels (one file each, eager `*_reference` twin beside) and the CUDA C++ twin.

Submodules are imported on demand: whether the Triton kernels run in the interpreter is fixed when
they are first defined (see `soar_fast.kernels.dispatch`), so importing this package defines nothing.
"""
