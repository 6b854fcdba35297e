"""Task modules: each knows only its data, model head and metrics; the engine does the training."""
