"""Which device a worker process generates on: one worker process per device.

A build runs one worker process per accelerator (DirectRunner `multi_processing` with as many
workers as GPUs, dask-cuda's one worker per GPU, one SDK process per GPU on Dataflow); each
process claims one device for its life, and its scorers run on the same device.

`claim_device(requested)`:

1. an explicit index (`cuda:3`) or a device without indices (`cpu`, `mps`) is used as given;
2. `LOCAL_RANK` (torchrun, accelerate) picks `cuda:<rank mod count>`;
3. otherwise the process takes the first visible device that no other worker on this machine
   holds: a lock file per *physical* device (its UUID), held until the process ends (the
   kernel releases it when the process dies, however it dies). Visible devices are tried in
   the order this process sees them, so under dask-cuda, whose workers each see their own GPU
   first (`CUDA_VISIBLE_DEVICES` rotated), every worker takes its own GPU;
4. when every device is held (more workers than devices), the least-used one is shared and
   a warning says so.

`SYNTHGEN_DEVICES` (comma-separated, e.g. `cuda:0,cuda:2`) restricts the devices workers may
claim; its entries are identities of their own, so a list such as `cpu:0,cpu:1` exercises the
claims on a machine without GPUs. `SYNTHGEN_DEVICE_CLAIMS` is the folder of the lock files
(default: `synthgen-device-claims` in the system's temporary folder); workers that must not
share devices must share this folder.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

DEVICES_ENV = "SYNTHGEN_DEVICES"
CLAIMS_ENV = "SYNTHGEN_DEVICE_CLAIMS"


@dataclass(frozen=True)
class Device:
    """A device this process can use: its torch name and what identifies it machine-wide."""

    name: str  # e.g. cuda:1
    identity: str  # e.g. the GPU's UUID; equal across processes that see it under other names


def claims_dir() -> Path:
    env = os.environ.get(CLAIMS_ENV)
    return Path(env) if env else Path(tempfile.gettempdir()) / "synthgen-device-claims"


def visible_devices(requested: str) -> list[Device]:
    """The devices a worker may claim for `requested` (`cuda`), in this process's order."""
    listed = os.environ.get(DEVICES_ENV, "").strip()
    if listed:
        names = [n.strip() for n in listed.split(",") if n.strip()]
        wrong = [n for n in names if n.split(":")[0] != requested.split(":")[0]]
        if wrong:
            raise ValueError(
                f"{DEVICES_ENV}={listed!r}: {', '.join(wrong)} not of the recipe's device type "
                f"{requested!r}"
            )
        return [Device(n, f"listed-{n}") for n in names]
    if requested != "cuda":
        return [Device(requested, requested)]
    import torch

    out = []
    for i in range(torch.cuda.device_count()):
        uuid = getattr(torch.cuda.get_device_properties(i), "uuid", None)
        out.append(Device(f"cuda:{i}", f"gpu-{uuid}" if uuid is not None else f"cuda-{i}"))
    return out


def _lock_path(device: Device) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device.identity)
    return claims_dir() / f"{socket.gethostname()}-{safe}.lock"


def _take_free(candidates: list[Device]) -> tuple[Device, IO[str] | None]:
    """The first device whose lock file this process can hold; else the least-used one."""
    folder = claims_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for device in candidates:
        f = _lock_path(device).open("a+", encoding="ascii")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        logger.info("worker %d claimed %s", os.getpid(), device.name)
        return device, f
    device = candidates[os.getpid() % len(candidates)]
    logger.warning(
        "worker %d: every device is claimed by another worker (%d devices); sharing %s. "
        "Run one worker process per device.",
        os.getpid(),
        len(candidates),
        device.name,
    )
    return device, None


class DeviceClaims:
    """The device claims this process holds, one per requested device (`cuda`): each with
    its open lock file, kept open for the process's life on purpose (closing the file would
    release the claim).

    A registry: the process holds one, CLAIMS. It must be process-wide: the lock files it
    holds are the claims other worker processes on this machine see."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[Device, IO[str] | None]] = {}

    def claim(self, requested: str, devices: list[Device] | None = None) -> str:
        """The device this worker process generates and scores on (the module docstring).

        The same answer for every call in one process. `devices` overrides the visible list.
        """
        held = self.held.get(requested)
        if held is not None:
            return held[0].name
        explicit = ":" in requested or requested in ("cpu", "mps")
        if explicit and devices is None and not os.environ.get(DEVICES_ENV, "").strip():
            return requested
        candidates = devices if devices is not None else visible_devices(requested)
        if not candidates:
            raise RuntimeError(
                f"model.device {requested!r}: this worker sees no such device "
                "(CUDA_VISIBLE_DEVICES, drivers?)"
            )
        rank = os.environ.get("LOCAL_RANK", "").strip()
        if rank.isdigit():
            device = candidates[int(rank) % len(candidates)]
            self.held[requested] = (device, None)
            logger.info("worker %d: LOCAL_RANK %s -> %s", os.getpid(), rank, device.name)
            return device.name
        device, lock = _take_free(candidates)
        self.held[requested] = (device, lock)
        return device.name

    def release(self) -> None:
        """Give back every claim (tests; a process's exit does the same)."""
        for _, lock in self.held.values():
            if lock is not None:
                lock.close()
        self.held.clear()


CLAIMS = DeviceClaims()


def claim_device(requested: str, devices: list[Device] | None = None) -> str:
    """The device this worker process generates and scores on: a claim in this process's
    CLAIMS registry (`DeviceClaims.claim`)."""
    return CLAIMS.claim(requested, devices)


def release_claims() -> None:
    """Give back this process's claims (tests; a process's exit does the same)."""
    CLAIMS.release()
