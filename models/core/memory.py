"""Sizes the machine cannot hold are refused before any work, in one line.

A technique whose params set sizes (latent_dim, batch_size, image side) says, through
`memory_floor()`, how many bytes a training step needs at the least: a lower bound from the
sizes alone (tensors of the batch, the first layer's weights with their gradient and optimizer
slots), never an estimate of the whole network, so a refusal is never wrong. `check_memory`
compares it with the memory the machine has available now."""

from __future__ import annotations

import os
from pathlib import Path

from models.core.errors import GdlError

FLOAT = 4  # bytes of a float32


def available_bytes() -> int | None:
    """Memory available to a new allocation (MemAvailable), or the physical memory, or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _gb(n: int) -> str:
    return f"{n / 1e9:,.1f} GB" if n < 1e12 else f"{n / 1e12:,.0f} TB"


def check_memory(section: str, needed: int, sizes: dict[str, int]) -> None:
    """GdlError when `needed` bytes (a lower bound) exceed the memory available."""
    have = available_bytes()
    if have is not None and needed > have:
        named = " and ".join(f"{k}={v}" for k, v in sizes.items())
        raise GdlError(
            f"{section}: {named} need at least {_gb(needed)} for a training step; "
            f"this machine has {_gb(have)} available"
        )
