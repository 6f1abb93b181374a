"""The environment of a `ticgrpo train` subprocess in the kill-and-resume tests: one thread each
(bit-identical runs), and the crash hook set to `crash` ("<point>:<n>") or cleared."""

from __future__ import annotations

import os

from ticgrpo.train import checkpoint as ckpt


def crash_env(crash: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ckpt.CRASH_ENV}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    if crash is not None:
        env[ckpt.CRASH_ENV] = crash
    return env
