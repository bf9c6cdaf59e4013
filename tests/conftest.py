import os

# Must be set before any @triton.jit is imported: kernels run on the CPU through
# Triton's interpreter, and BLAS stays single-threaded so tests are repeatable.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
