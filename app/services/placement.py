"""Where a data-parallel job can run: the devices a worker declares, and the validate warning.

A worker trains a job of `resources.devices: N` only when it has N devices: its
DISTILLERY_WORKER_DEVICES, or else what it detects (CUDA devices; 1 on a CPU host, so CPU gloo
ranks are an operator's choice, never a surprise on a shared machine). A job needing more stays
`queued`, with one `waiting_for_devices` event, and goes back to the queue for a bigger worker
(worker/ddp.py). The API has no torch: it counts /dev/nvidiaN, or reads the same setting, which
in a split deployment is set on the API to the largest worker's count.
"""

import glob
from typing import Any

from app.config import Settings


def api_device_count(settings: Settings) -> int:
    """Return the device count the API assumes for the largest worker."""
    return settings.worker_devices or len(glob.glob("/dev/nvidia[0-9]*")) or 1


def placement_warnings(spec: Any, settings: Settings) -> list[str]:
    """Return warnings about where `spec` (a JobSpec) can run; empty when a worker fits it."""
    devices, available = spec.resources.devices, api_device_count(settings)
    if devices <= available:
        return []
    return [(f"resources.devices: the job needs {devices} devices and the workers have "
             f"{available} (DISTILLERY_WORKER_DEVICES); it would stay queued until a worker with "
             "enough devices starts")]
