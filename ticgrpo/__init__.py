"""ticgrpo: critic-free RL for language models with the GRPO family, built around TIC-GRPO."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# torch's OpenMP (libgomp) reads its wait policy once, when torch loads it, so this must run
# before torch is imported. By default an idle OpenMP thread spins (GOMP_SPINCOUNT 300000) at
# every barrier; on cores held by other jobs the spinning steals the time slices of the threads
# it waits for, and a training step took 13x longer instead of fair sharing's 3x
# (benchmarks/cpu_contention.py, docs/training.md). PASSIVE threads sleep instead. A value the
# user set is kept; after `import torch` it would no longer take effect, so it is not set.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
