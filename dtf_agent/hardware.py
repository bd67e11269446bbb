"""What this machine is (capabilities, sent once at registration) and how busy it is (each heartbeat)."""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
from typing import Any

import psutil

log = logging.getLogger(__name__)


def _gpus() -> list[dict[str, Any]]:
    """NVIDIA GPUs through nvidia-ml-py when it is installed; an empty list otherwise.

    Missing drivers are normal on most lab machines, so every failure here means "no GPU",
    logged at debug level rather than raised.
    """
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - any NVML failure means no usable GPU
        log.debug("NVML unavailable: %s", exc)
        return []
    gpus = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append({
                "index": i,
                "name": name.decode() if isinstance(name, bytes) else str(name),
                "memory_gb": round(mem.total / 2**30, 2),
            })
    finally:
        pynvml.nvmlShutdown()
    return gpus


def detect_capabilities(work_dir: str | None = None) -> dict[str, Any]:
    vm = psutil.virtual_memory()
    disk = psutil.disk_usage(work_dir or os.getcwd())
    gpus = _gpus()
    hardware = ["cpu"] + (["cuda"] if gpus else [])
    caps: dict[str, Any] = {
        "cpu_count": psutil.cpu_count(logical=True) or 1,
        "cpu_physical": psutil.cpu_count(logical=False) or 1,
        "cpu_model": _cpu_model(),
        "memory_gb": round(vm.total / 2**30, 2),
        "disk_gb": round(disk.total / 2**30, 2),
        "os": platform.system().lower(),
        "os_release": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "gpus": gpus,
        "gpu_count": len(gpus),
        "gpu_memory_gb": max((g["memory_gb"] for g in gpus), default=0.0),
        "hardware": hardware,
    }
    caps["hardware_id"] = hardware_id(caps)
    return caps


def hardware_id(caps: dict[str, Any]) -> str:
    """Same machine model -> same id, so results group by hardware across workers."""
    key = "|".join(str(caps.get(k)) for k in ("cpu_model", "cpu_count", "memory_gb", "arch"))
    key += "|" + ",".join(g["name"] for g in caps.get("gpus", []))
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class _GpuSampler:
    """The busiest GPU's utilisation and memory use, through NVML kept open (an nvmlInit per
    heartbeat would cost more than the rest of the heartbeat). Off for good after the first failure:
    a machine without a usable GPU pays nothing."""

    def __init__(self) -> None:
        self._handles: list[Any] | None = None
        self._off = False

    def sample(self) -> tuple[float, float] | None:
        if self._off:
            return None
        try:
            import pynvml

            if self._handles is None:
                pynvml.nvmlInit()
                self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            if not self._handles:
                self._off = True
                return None
            util = max(float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu) for h in self._handles)
            mems = [pynvml.nvmlDeviceGetMemoryInfo(h) for h in self._handles]
            mem = max(100.0 * m.used / m.total for m in mems if m.total) if mems else 0.0
            return util, mem
        except Exception as exc:  # noqa: BLE001 - no module, no driver, a GPU fallen off the bus: no GPU figures
            log.debug("no GPU metrics: %s", exc)
            self._off = True
            return None


_gpu_sampler = _GpuSampler()


def live_metrics(work_dir: str | None = None) -> dict[str, float]:
    """Cheap enough for every heartbeat: no sampling interval, no per-process walk."""
    out = {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_percent": psutil.virtual_memory().percent,
        "disk_percent": psutil.disk_usage(work_dir or os.getcwd()).percent,
    }
    gpu = _gpu_sampler.sample()
    if gpu is not None:
        out["gpu_percent"], out["gpu_memory_percent"] = gpu
    return out


def environment() -> dict[str, str]:
    return {"python": sys.version.split()[0], "platform": platform.platform()}
