"""Test-session set-up that must happen before any test module imports numba.cuda."""
import os

# CUDA kernels run in Numba's CUDA simulator unless the caller chose otherwise: CI has no
# GPU. On a GPU machine, NUMBA_ENABLE_CUDASIM=0 runs tests/test_cuda.py on the device.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
