"""What `traintop resume` may do to a run, decided from its folder alone.

Torch-free, so the CLI refuses a resume before it starts an engine or a dashboard for it; the
engine checks the same again, under the run folder's lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import Config, load_config, parse_override
from .errors import UserError
from .runstore import RunFolder, refuse_foreign_code

# What `resume --set` may not change: the checkpoint was made with this data, this model, this
# optimizer and this random stream. How long, how fast and what to watch may change.
FIXED_ON_RESUME = {"run": ("name", "seed"), "data": None, "model": None, "optim": ("name",),
                   "early_stopping": ("monitor", "mode")}  # None: every key of the section
CHANGEABLE = ("train.*, optim.lr, optim.weight_decay, optim.momentum, schedule.*, checkpoint.*, "
              "early_stopping.enabled/patience/min_delta/restore_best, run.device, run.threads")


def resume_config(folder: RunFolder, overrides: list[str],
                  trust: bool = False) -> tuple[Config, dict[str, Any], str | None]:
    """The run's config with `overrides` applied, the keys they set, and how the run ended (None:
    killed). UserError when the run cannot be resumed that way (code it would import from a
    folder not the user's own, in place, without `trust` included); nothing is written."""
    meta = folder.read_json("meta.json") or {}
    source = meta.get("source", "config")
    if source != "config":
        loop = {"script": f"your script ({meta.get('script', 'the script')})",
                "lightning": "your Lightning Trainer", "transformers": "your Hugging Face Trainer"}.get(
                    source, "your own loop (traintop.watch)")
        raise UserError(f"run {folder.run_id} was trained by {loop}, which only it can continue: run it "
                        "again, loading its own checkpoint (checkpoints/last.pt, if traintop saved one, holds "
                        "the model's and the optimizer's state_dict)")
    if not folder.last.is_file():
        raise UserError(f"run {folder.run_id} has no checkpoints/last.pt to resume from")
    old = load_config(folder.config)
    cfg = load_config(folder.config, overrides)
    before, after = old.to_dict(), cfg.to_dict()
    fixed = [f"{section}.{key}" for section, values in after.items() for key, value in values.items()
             if value != before[section][key] and section in FIXED_ON_RESUME
             and (FIXED_ON_RESUME[section] is None or key in FIXED_ON_RESUME[section])]
    if fixed:
        raise UserError(f"--set {', '.join(fixed)}: cannot change when run {folder.run_id} resumes (its "
                        f"checkpoint was made with this data, model, optimizer and seed); what can: {CHANGEABLE}")
    report = folder.read_json("report.json") or {}
    status = report.get("status")
    done = report.get("epochs", 0)
    if status in ("completed", "early_stopped") and done >= cfg.train.epochs:
        raise UserError(f"run {folder.run_id} has {status.replace('_', ' ')} after {done} epochs, with no "
                        f"epochs left to train; for more: traintop resume {folder.run_id} "
                        f"--set train.epochs=N (N > {done})")
    config_dir = meta.get("config_dir", str(folder.path))
    refuse_foreign_code(folder, folder.read_json("meta.json"), cfg.imported_code(), str(config_dir), trust)
    cfg.base_dir = Path(config_dir)
    keys = {f"{section}.{key}": value for section, key, value in map(parse_override, overrides)}
    return cfg, keys, status
