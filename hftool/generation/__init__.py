"""Text generation with causal LMs: settings, loading, decoding, batching, task prompts and metrics.

The modules import torch and transformers lazily (``settings`` not at all), so the CLI can check every flag
and reject bad input before any heavy import or model load.
"""
