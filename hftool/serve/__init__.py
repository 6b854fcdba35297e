"""``hftool serve``: a model behind an OpenAI-compatible HTTP API (FastAPI + uvicorn), decoded in batches."""
