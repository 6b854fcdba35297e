"""See what a transformer does: positional encodings, attention, contextual embeddings and predictions.

Each module computes plain arrays and dataclasses that tests can check; ``plots`` turns them into PNGs.
"""
