"""The data summary of `traintop check`, as lines of text, from the summary `run_started` carries."""

from __future__ import annotations

from typing import Any


def summary_lines(s: dict[str, Any]) -> list[str]:
    """Sizes per split, feature types, images or vocabulary, class balance, leakage, a batch's shape."""
    lines = [f"task        {s['task']}" + (f" ({s['kind']} data)" if s.get("kind", "tabular") != "tabular" else ""),
             f"{'rows' if s.get('kind', 'tabular') in ('tabular', 'text') else 'samples':<12}{s['n_train']} train / {s['n_val']} val / {s['n_test']} test"]
    kinds = s.get("feature_types", {})
    if "image_size" in s:
        how = "streamed through a DataLoader (over data.memory_limit_mb)" if s.get("streaming") else "in memory"
        channels = {1: "grayscale", 3: "RGB"}.get(s["channels"], "")
        lines.append(f"images      {s['image_size']}x{s['image_size']}, {s['channels']} channel(s) {channels}, {how}")
        if s.get("skipped_files"):
            lines.append(f"skipped     {s['skipped_files']} unreadable or too large file(s)")
    elif s.get("kind") == "tensor":
        lines.append(f"inputs      {', '.join(kinds.values())}")
    else:
        counts: dict[str, int] = {}
        for k in kinds.values():
            counts[k] = counts.get(k, 0) + 1
        described = ", ".join(f"{n} {k}" for k, n in counts.items())
        lines.append(f"features    {len(kinds)} ({described}) -> {s['inputs']} inputs")
    lines += column_lines(s.get("columns") or [])
    if s.get("vocab_size"):
        lines.append(f"vocabulary  {s['vocab_size']} entries (words, padding 0, out-of-vocabulary 1); "
                     f"at most {s.get('max_tokens', '?')} words per row")
    if s.get("classes"):
        counts = s["class_counts"]
        lines.append(f"classes     {len(s['classes'])}: " + ", ".join(
            f"{c} ({n})" for c, n in zip(s["classes"], counts["train"])) + "  [train counts]")
        for split in ("val", "test"):
            total = sum(counts[split]) or 1
            lines.append(f"  {split:<9} " + ", ".join(f"{c} {n / total:.0%}" for c, n in zip(s["classes"], counts[split])))
    else:
        lines.append(f"target      mean {s['target_mean']:.4g}, std {s['target_std']:.4g}")
    lines.append(f"leakage     {s.get('leakage', 0)} repeated samples across splits")
    batch = s.get("batch")
    if batch:
        lines.append(f"batch       inputs {tuple(batch['inputs'])}, targets {tuple(batch['targets'])}")
    return lines


NAME_WIDTH = 24  # longer column names are cut, so the table stays readable at 80 columns


def column_lines(columns: list[dict[str, Any]]) -> list[str]:
    """Each column of a table: its name, type (numeric, categorical, text, left out, target),
    missing count and encoding."""
    if not columns:
        return []
    names = [c["name"] if len(c["name"]) <= NAME_WIDTH else c["name"][:NAME_WIDTH - 1] + "…" for c in columns]
    width = max(len(n) for n in names)
    lines = [f"columns     {'name':<{width}}  {'type':<11}  {'missing':>7}  encoding"]
    for name, c in zip(names, columns):
        lines.append(f"            {name:<{width}}  {c['type']:<11}  {c['missing']:>7}  {c['encoding']}")
    return lines
