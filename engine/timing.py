"""Where a step's time goes, phase by phase, sampled so that measuring costs nothing.

One step is timed every SAMPLE_SECONDS: the loop marks the start of the step (before its batch
is drawn) and the end of each phase. On the CPU the marks read the host clock. On a GPU they
record CUDA events, read at a later flush once the device has passed them (`Event.query`), so
timing never syncs; there the data phase is what the device waited for the batch. The samples
go out with the steps batch of their flush, as its `timing` columns:
{"step": [...], "data": [seconds...], "forward": [...], "backward": [...], "update": [...]}.
"""

from __future__ import annotations

import time

SAMPLE_SECONDS = 0.25
CONFIG_PHASES = ("data", "forward", "backward", "update")  # a config run's train_step
LOOP_PHASES = ("data", "forward+backward", "update")  # a loop of the user's own, between its calls to us


class PhaseTimer:
    """Times one step now and then: `start()` at its top, `lap(phase)` at the end of each phase.

    `start` does something only when a sample is due (armed at a flush, at most every
    SAMPLE_SECONDS); otherwise every call is one attribute test.
    """

    def __init__(self, phases: tuple[str, ...] = CONFIG_PHASES, device=None):
        self.phases = phases
        self.cuda = device is not None and getattr(device, "type", "") == "cuda"
        self.armed = True  # the first step is sampled
        self.on = False  # timing the current step
        self.step_of = lambda: 0  # the step being timed, when it ends
        self.marks: list = []
        self.done: list[tuple[int, list[float]]] = []  # (step, seconds per phase)
        self.pending: list[tuple[int, list]] = []  # on a GPU: (step, events) not yet passed
        self.last_sample = -SAMPLE_SECONDS

    def start(self) -> None:
        """The top of a step, before its batch is drawn."""
        if not self.armed:
            self.on = False
            return
        self.armed, self.on = False, True
        self.marks = [(-1, self._mark())]

    def lap(self, phase: str) -> None:
        """The end of `phase`; the last phase ends the sample. Phases after the first may come
        round again (forward and backward once per batch under gradient accumulation): their
        times add up. A phase out of turn (a loop that skipped one) drops the sample."""
        if not self.on:
            return
        at, last = self.phases.index(phase) if phase in self.phases else -1, self.marks[-1][0]
        if not (at == last + 1 or 1 <= at <= last):
            self.on = False
            return
        self.marks.append((at, self._mark()))
        if at == len(self.phases) - 1:
            self.on = False
            if self.cuda:
                self.pending.append((self.step_of(), self.marks))
            else:
                self.done.append((self.step_of(), self.per_phase(self.marks, lambda a, b: b - a)))

    def per_phase(self, marks: list, elapsed) -> list[float]:
        """Seconds spent in each phase, from the marks of one sample."""
        seconds = [0.0] * len(self.phases)
        for (_, a), (at, b) in zip(marks, marks[1:]):
            seconds[at] += elapsed(a, b)
        return seconds

    def cancel(self) -> None:
        """The step was not finished (a stop, a pause between phases): its sample is dropped."""
        self.on = False

    def _mark(self):
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def take(self) -> dict:
        """The samples finished since the last take, as columns (empty when none); arms the next
        sample when it is due. Called at each flush."""
        now = time.perf_counter()
        if now - self.last_sample >= SAMPLE_SECONDS and not self.on:
            self.armed, self.last_sample = True, now
        if self.pending:
            still = []
            for step, events in self.pending:
                if events[-1][1].query():  # passed: every earlier event has been too
                    self.done.append((step, self.per_phase(events, lambda a, b: a.elapsed_time(b) / 1000)))
                else:
                    still.append((step, events))
            self.pending = still[-16:]  # a device far behind: the oldest samples are let go
        if not self.done:
            return {}
        done, self.done = self.done, []
        columns: dict[str, list] = {"step": [s for s, _ in done]}
        for i, phase in enumerate(self.phases):
            columns[phase] = [float(f"{seconds[i]:.6g}") for _, seconds in done]
        return columns
