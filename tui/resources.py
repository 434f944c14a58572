"""The resources a run's engine uses, on screen: a short figure for the header and the Resources view.

Fed only by `resources` events (sampled by the engine every few seconds), so a finished run shown
later reads the same as it did live.
"""

from __future__ import annotations

from traintop.engine import events as ev

from .literal import Literal, LiteralText

HISTORY = 12  # samples listed in the view, newest first


def size(mb: float) -> str:
    """Megabytes as a short size: 812M, 3.4G."""
    return f"{mb / 1024:.1f}G" if mb >= 1024 else f"{mb:.0f}M"


def header_figure(e: ev.Resources | None, room: int = 1 << 16) -> str:
    """One line for the header: each GPU's memory in use of its total and utilisation, then CPU
    and RSS ("gpu0 3.1G/80.0G 97%  cpu 104%  rss 1.2G"), in at most `room` cells: what does not
    fit gives way from the end (rss, cpu, the later GPUs); empty before the first sample."""
    if e is None:
        return ""
    parts = []
    for d in e.devices:
        util = f" {d['utilization']:.0f}%" if d.get("utilization") is not None else ""
        parts.append(f"gpu{d.get('index', 0)} {size(d.get('reserved_mb', 0))}/{size(d.get('total_mb', 0))}{util}")
    parts += [f"cpu {e.cpu_percent:.0f}%", f"rss {size(e.rss_mb)}"]
    while parts and len("  ".join(parts)) > room:
        parts.pop()
    return "  ".join(parts)


class ResourcesView(Literal):
    """Per device: memory allocated, reserved, peak and total, and utilisation; the engine's CPU and
    RSS; on several ranks, each rank's throughput; then the latest samples, newest first."""

    def show(self, samples: list[ev.Resources], rank_rates: list | None = None) -> None:
        """Redraw from the run's resources samples, oldest first, and each rank's samples/s as the
        last steps batch gave them (several ranks only)."""
        t = LiteralText()
        if rank_rates:
            t.append(f"throughput per rank (samples/s, last flush), {sum(rank_rates):,.0f} in all\n", style="bold")
            t.append("  ".join(f"rank {r}: {rate:,.0f}" for r, rate in enumerate(rank_rates)) + "\n\n")
        if not samples:
            t.append("no resources sampled yet: the engine reports them every few seconds")
            self.update(t)
            return
        last = samples[-1]
        if last.devices:
            t.append(f"{'device':<28}{'allocated':>11}{'reserved':>11}{'peak':>11}{'total':>11}{'util':>7}\n",
                     style="bold")
            for d in last.devices:
                util = f"{d['utilization']:.0f}%" if d.get("utilization") is not None else "-"
                name = f"cuda:{d.get('index', 0)} {d.get('name', '')}"[:27]
                t.append(f"{name:<28}{size(d.get('allocated_mb', 0)):>11}{size(d.get('reserved_mb', 0)):>11}"
                         f"{size(d.get('peak_mb', 0)):>11}{size(d.get('total_mb', 0)):>11}{util:>7}\n")
        else:
            t.append("no GPU in use by the engine\n")
        t.append(f"\nengine process: cpu {last.cpu_percent:.0f}% of a core, rss {size(last.rss_mb)}\n\n")
        t.append(f"{'t':>9}{'cpu':>7}{'rss':>9}  gpu memory (reserved) and utilisation\n", style="bold")
        for e in reversed(samples[-HISTORY:]):
            gpus = "  ".join(f"{size(d.get('reserved_mb', 0))}"
                             + (f" {d['utilization']:.0f}%" if d.get("utilization") is not None else "")
                             for d in e.devices)
            t.append(f"{e.t:>8.0f}s{e.cpu_percent:>6.0f}%{size(e.rss_mb):>9}  {gpus or '-'}\n")
        self.update(t)
