"""mimbench: a tokenizer-agnostic benchmark suite for masked image modeling."""

__version__ = "0.1.0"
