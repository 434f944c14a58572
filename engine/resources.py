"""What the engine process uses: per GPU its memory and utilisation, and the process's CPU and RSS.

Sampled every few seconds on the control server's thread, never the training thread, and from
host-side counters only: torch's allocator statistics and NVML are read without a device sync,
and CUDA is never initialised here (a run that has not touched the GPU reports no GPU).
Utilisation comes from NVML (`pip install traintop[gpu]`, i.e. nvidia-ml-py); without it the
memory figures are still torch's own and utilisation is left out.
"""

from __future__ import annotations

import os
import sys
import time

MB = 1024 * 1024


class ResourceSampler:
    """Samples the process's resources; each `sample()` gives the fields of a `resources` event."""

    def __init__(self):
        self._last = (time.monotonic(), _cpu_seconds())
        self._nvml = None  # the pynvml module once initialised; False when it is absent or fails
        self._handles: dict[int, object] = {}

    def sample(self) -> dict:
        """CPU (percent of one core since the last sample), RSS and each used GPU."""
        now, cpu = time.monotonic(), _cpu_seconds()
        then, cpu_then = self._last
        self._last = (now, cpu)
        cpu_percent = 100.0 * (cpu - cpu_then) / (now - then) if now > then else 0.0
        return {"cpu_percent": round(cpu_percent, 1), "rss_mb": round(rss_bytes() / MB, 1),
                "devices": self.devices()}

    def devices(self) -> list[dict]:
        """Per CUDA device the engine uses: memory allocated, reserved and peak (MB, torch's own
        accounting), total, and utilisation (percent, NVML) where NVML is at hand."""
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_initialized():
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            reserved = torch.cuda.memory_reserved(i)
            if not reserved:  # a device this process never allocated on
                continue
            props = torch.cuda.get_device_properties(i)
            device = {"index": i, "name": props.name,
                      "allocated_mb": round(torch.cuda.memory_allocated(i) / MB, 1),
                      "reserved_mb": round(reserved / MB, 1),
                      "peak_mb": round(torch.cuda.max_memory_allocated(i) / MB, 1),
                      "total_mb": round(props.total_memory / MB, 1)}
            utilization = self.utilization(i, props)
            if utilization is not None:
                device["utilization"] = utilization
            out.append(device)
        return out

    def utilization(self, index: int, props) -> float | None:
        """The GPU's utilisation in percent over NVML's last sample period, or None without NVML."""
        if self._nvml is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception:  # noqa: BLE001 - not installed, or no driver library: no utilisation
                self._nvml = False
        if not self._nvml:
            return None
        try:
            handle = self._handles.get(index)
            if handle is None:
                # By UUID: torch's index counts only the devices CUDA_VISIBLE_DEVICES lets it see.
                uuid = getattr(props, "uuid", None)
                handle = (self._nvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}") if uuid is not None
                          else self._nvml.nvmlDeviceGetHandleByIndex(index))
                self._handles[index] = handle
            return float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:  # noqa: BLE001 - a device NVML cannot name: the memory figures still stand
            return None


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def rss_bytes() -> int:
    """The process's resident memory now (Linux), or its peak where only that is known."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
