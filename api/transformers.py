"""Hugging Face: `Trainer(..., callbacks=[TraintopCallback()])` gives the run traintop's
dashboard and controls."""

from traintop.engine.hf_callback import TraintopCallback

__all__ = ["TraintopCallback"]
