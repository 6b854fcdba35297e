"""hftool: one CLI for the life of a transformer, on the Hugging Face stack."""

__version__ = "0.1.0"
