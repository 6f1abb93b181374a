"""ticgrpo: critic-free RL for language models with the GRPO family, built around TIC-GRPO."""

__version__ = "0.1.0"
