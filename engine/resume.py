"""What `traintop resume` may do to a run, decided from its folder alone.

Torch-free, so the CLI refuses a resume before it starts an engine or a dashboard for it; the
engine checks the same again, under the run folder's lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import events as ev
from .config import Config, load_config, parse_override
from .errors import UserError
from .runstore import RunFolder, begins_with_its_start, refuse_foreign_code, started_event

# What `resume --set` may not change: the checkpoint was made with this data, this model, this
# optimizer and this random stream. How long, how fast and what to watch may change.
FIXED_ON_RESUME = {"run": ("name", "seed"), "data": None, "model": None, "optim": ("name",),
                   "early_stopping": ("monitor", "mode")}  # None: every key of the section
CHANGEABLE = ("train.*, optim.lr, optim.weight_decay, optim.momentum, schedule.*, checkpoint.*, "
              "early_stopping.enabled/patience/min_delta/restore_best, run.device, run.threads")


def resume_launch(folder: RunFolder, how):
    """The launch a resume runs on (a distributed.Launch), or None for one process: as many
    processes as the run trained on. A different number is refused: each rank's shard of the
    data and its random state go on only on as many ranks."""
    from .distributed import Launch

    meta = folder.read_json("meta.json") or {}
    trained = meta.get("world_size", 1)
    trained = trained if isinstance(trained, int) and not isinstance(trained, bool) and trained > 0 else 1
    nnodes = meta.get("nnodes", 1) if isinstance(meta.get("nnodes"), int) else 1
    if how is None:
        if trained == 1:
            return None
        if nnodes > 1:
            raise UserError(f"run {folder.run_id} trained on {trained} processes over {nnodes} machines; resume it "
                            f"the same way, on each machine: traintop resume {folder.run_id} --nproc-per-node "
                            f"{trained // nnodes} --nnodes {nnodes} --node-rank R --rdzv-endpoint HOST:PORT")
        return Launch(trained)
    if how.world_size != trained:
        asked = f"{how.world_size} process(es)"
        fits = (f"--nproc-per-node {trained // nnodes}" + (f" --nnodes {nnodes}" if nnodes > 1 else "")
                if trained > 1 else "no --nproc-per-node")
        raise UserError(f"run {folder.run_id} trained on {trained} process(es); resuming on {asked} is refused: "
                        f"each process's share of the data and its random state go on only on as many. "
                        f"Resume it with {fits}")
    return how


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
    check_log(folder, None)
    old = load_config(folder.config)
    cfg = load_config(folder.config, overrides)
    before, after = old.to_dict(), cfg.to_dict()
    edited = [f"{key} ({then!r} then, {now!r} now)" for key, then, now in edited_since_start(folder, before)]
    if edited:
        raise UserError(f"run {folder.run_id}: its config.toml was changed since the run started: "
                        f"{', '.join(edited)}; these cannot change when it resumes (its checkpoint was made "
                        f"with that data, model, optimizer and seed): put them back, or start a new run with "
                        f"the changed config")
    fixed = [key for key, _, _ in changed_fixed(before, after)]
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


def changed_fixed(before: dict, after: dict) -> list[tuple[str, Any, Any]]:
    """The keys of FIXED_ON_RESUME whose values differ between two configs (as `to_dict` gives
    them, or as JSON kept them): (key, before, after). Only keys `before` holds: a key a later
    traintop added is not a change."""
    import json

    changed = []
    for section, keys in FIXED_ON_RESUME.items():
        old, new = (c.get(section) if isinstance(c.get(section), dict) else {} for c in (before, after))
        for key in sorted(old) if keys is None else [k for k in keys if k in old]:
            a, b = (json.loads(json.dumps(v.get(key))) for v in (old, new))  # tuples as lists
            if a != b:
                changed.append((f"{section}.{key}", a, b))
    return changed


def edited_since_start(folder: RunFolder, now: dict) -> list[tuple[str, Any, Any]]:
    """The keys resume may not change whose value in config.toml is not the one the run started
    with (its run_started event): the file was edited by hand."""
    started = started_event(folder)
    if started is None or not isinstance(started.config, dict):
        return []
    return changed_fixed(started.config, now)


DATA_FACTS = {"n_train": "training rows", "n_val": "validation rows", "n_test": "test rows",
              "features": "features", "classes": "classes", "input_shape": "input shape"}


def check_same_data(folder: RunFolder, now: dict) -> None:
    """A resume trains on the data the run started on: its split sizes, features, classes and
    input shape (a data `summary`) must be those its run_started event gave; a UserError names
    what differs."""
    import json

    started = started_event(folder)
    then = started.data if started is not None and isinstance(started.data, dict) else {}
    differ = []
    for key, what in DATA_FACTS.items():
        if key not in then or key not in now:
            continue
        a, b = then[key], json.loads(json.dumps(now[key]))
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list) and len(a) + len(b) > 8:
            differ.append(f"{what} ({len(a)} then, {len(b)} now)" if len(a) != len(b) else f"{what} (named otherwise)")
        else:
            differ.append(f"{what} ({a!r} then, {b!r} now)" if key != "input_shape" else f"{what} ({a} then, {b} now)")
    if differ:
        raise UserError(f"run {folder.run_id} started on other data than its data gives now: {', '.join(differ)}; "
                        "its checkpoint was made on the data it started on, so it is not resumed: put that data "
                        "back, or start a new run on the new data")


def check_log(folder: RunFolder, offset: int | None) -> None:
    """A run resumes onto its own history: its log must be there, begin with run_started, and hold
    every byte up to where last.pt says it had written (a log deleted, emptied or cut shorter by
    hand would leave a run without its start, its best or its curves). A UserError naming it."""
    why = ""
    if not folder.events.is_file():
        why = "has no events.jsonl"
    elif not begins_with_its_start(folder):
        why = "has an events.jsonl that does not begin with its run_started event"
    elif offset is not None and (size := folder.events.stat().st_size) < offset:
        why = (f"has an events.jsonl of {size} bytes, shorter than the {offset} it had written when "
               "last.pt was saved")
    if why:
        raise UserError(f"run {folder.run_id} {why}: its history is lost, and a resumed run would go on without "
                        "it; start a new run, or use its checkpoints as they are (traintop predict)")


def event_of(line: bytes) -> ev.Event | None:
    """One line of events.jsonl as its event; None for a torn line (UnicodeDecodeError is a
    ValueError too) or one that is no event."""
    try:
        return ev.parse_line(line.decode())
    except ValueError:
        return None
