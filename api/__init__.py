"""traintop: run, watch and steer PyTorch training from a terminal.

The face for your own training code. Importing it is light (no torch until used):

    import traintop

    run = traintop.watch(model, optimizer, name="mnist-cnn", config=vars(args))
    ...
    run.step(loss)          # after backward, before optimizer.step()

Lightning: `traintop.lightning.TraintopCallback`; Hugging Face: `traintop.transformers.TraintopCallback`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from traintop.engine.watch import WatchedRun


def watch(model, optimizer=None, **options) -> WatchedRun:
    """Record and serve a run of your own loop: the dashboard, attach, pause, learning-rate
    changes, stop and checkpoint, as for a config run. See `traintop.engine.watch.watch`."""
    from traintop.engine.watch import watch as start

    return start(model, optimizer, **options)


def __getattr__(name: str):
    if name == "WatchedRun":
        from traintop.engine.watch import WatchedRun

        return WatchedRun
    if name == "UserError":  # what a bad argument raises, naming it
        from traintop.engine.errors import UserError

        return UserError
    raise AttributeError(f"module 'traintop' has no attribute {name!r}")


__all__ = ["watch", "WatchedRun", "UserError"]
