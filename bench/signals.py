"""False alarms: the warnings the detectors raise on healthy runs, which should raise none.

Trains every sample config (digits_mlp.toml is the built-in demo written out) and the defaults
(a config that names a key but changes nothing) once per seed, headless and in this process, and
counts the warnings each run raised, by kind, with the first message of each. nan_loss and
leakage are facts about the run, not readings of its curves, and are counted all the same.

    python bench/signals.py [--seeds 40 50] [--configs defaults digits_mlp ...] [--set KEY=VALUE ...]

`--seeds A B` trains seeds A..B-1. The thresholds were set on seeds 0-9 and 20-29; the default,
40-49, checks them on runs they were not tuned on.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

from traintop.engine import events as ev
from traintop.engine.config import load_config
from traintop.engine.run import Run
from traintop.engine.runstore import read_events

SAMPLES = Path(__file__).resolve().parent.parent / "sample_configs"
CONFIGS = ["defaults", *sorted(p.stem for p in SAMPLES.glob("*.toml") if p.stem != "all_keys")]


def warnings_of(config: str, seed: int, overrides: list[str], runs: Path) -> list[ev.RunWarning]:
    """The warnings of one healthy run: the last word on each condition."""
    path = None if config == "defaults" else SAMPLES / f"{config}.toml"
    run = Run.prepare(load_config(path, [f"run.seed={seed}", *overrides]), runs)
    try:
        run.train()
    finally:
        run.close()
    latest = {}
    for e in read_events(run.folder.events)[0]:
        if isinstance(e, ev.RunWarning):
            latest[e.id] = e
    return list(latest.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs=2, default=[40, 50], metavar=("FIRST", "END"))
    parser.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    by_kind: collections.Counter[str] = collections.Counter()
    alarmed = runs = 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            for seed in range(*args.seeds):
                found = warnings_of(config, seed, args.overrides, Path(tmp))
                runs += 1
                alarmed += bool(found)
                for w in found:
                    by_kind[w.kind] += 1
                    print(f"{config} seed {seed}: {w.kind} at step {w.step} (x{w.count}): {w.message}",
                          file=sys.stderr)
    print(f"{runs} healthy runs ({', '.join(args.configs)}; seeds {args.seeds[0]}-{args.seeds[1] - 1}) "
          f"in {time.perf_counter() - started:.0f} s: {alarmed} with a warning"
          + (f" ({', '.join(f'{k} {n}' for k, n in by_kind.most_common())})" if by_kind else ""))


if __name__ == "__main__":
    main()
