"""Images per second through the two image-folder paths: in memory and streamed.

Both train the same CNN on the same drawn-shapes folder with the same seed; the streamed run
sets data.memory_limit_mb = 1, so its images go through a DataLoader with workers and the
decoded-image cache. Rounds are interleaved, alternating which path goes first; the figures are
medians, and the ratio is streamed over in-memory within each round.

    python bench/data.py [--rounds 5] [--images 1500] [--epochs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from drawn import shapes_folder  # noqa: E402
from traintop.engine.config import build_config  # noqa: E402
from traintop.engine.run import Run  # noqa: E402


def one_run(folder: Path, runs: Path, limit: int, epochs: int) -> tuple[float, float]:
    """(seconds to prepare the data and model, training images per second) of one run."""
    cfg = build_config({
        "data": {"source": "image_folder", "path": str(folder), "image_size": 32, "batch_size": 64,
                 "memory_limit_mb": limit},
        "model": {"kind": "cnn", "channels": [16, 32], "hidden": [64]},
        "train": {"epochs": epochs}, "early_stopping": {"enabled": False}})
    start = time.perf_counter()
    run = Run.prepare(cfg, runs)
    prepared = time.perf_counter() - start
    start = time.perf_counter()
    run.train()
    seconds = time.perf_counter() - start
    assert run.trainer.data.streaming == (limit == 1)
    return prepared, run.trainer.step * cfg.data.batch_size / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="traintop-bench-"))
    folder = shapes_folder(tmp / "shapes", per_class=args.images // 3, size=48)
    paths = {"in memory": 1024, "streamed": 1}
    speed = {name: [] for name in paths}
    prepare = {name: [] for name in paths}
    ratios = []
    for limit in paths.values():  # warm-up: imports and first-use costs, not measured
        one_run(folder, tmp / "runs", limit, 1)
    for r in range(args.rounds):
        order = list(paths) if r % 2 == 0 else list(paths)[::-1]
        this = {}
        for name in order:
            prepare_s, images_s = one_run(folder, tmp / "runs", paths[name], args.epochs)
            prepare[name].append(prepare_s)
            speed[name].append(images_s)
            this[name] = images_s
        ratios.append(this["streamed"] / this["in memory"])
    print(f"{args.images // 3 * 3} drawn 48x48 PNGs at image_size 32, CNN [16, 32], batch 64, "
          f"{args.epochs} epochs, {args.rounds} rounds")
    for name in paths:
        print(f"{name:<10} median {statistics.median(speed[name]):8.0f} images/s   "
              f"prepare {statistics.median(prepare[name]):5.2f} s")
    print(f"ratio      median {statistics.median(ratios):.3f}  (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
