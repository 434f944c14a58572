"""Lightning: `Trainer(callbacks=[TraintopCallback()])` gives the run traintop's dashboard and
controls. Works whether you import `lightning` or `pytorch_lightning`."""

from traintop.engine.lightning_callback import TraintopCallback

__all__ = ["TraintopCallback"]
