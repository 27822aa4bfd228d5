"""Data-parallel training: one `tf.distribute.MirroredStrategy` over `replicas` devices.

With GPUs the strategy mirrors over the first `replicas` of them; without one (dev machines,
CI) the CPU is split into `replicas` logical devices, which TensorFlow only allows before it
initialises its devices: `reserve_devices` does it at the start of every step of a technique
that trains on more than one replica, and fails in one line when the process already started
TensorFlow with fewer devices. One replica uses no strategy at all, so it trains exactly as
without this module.

Each replica sees its shard of the global batch; losses are averaged over the GLOBAL batch and
gradients summed across replicas, so one update of R replicas is the update one device makes on
the whole batch (up to float32 summation order).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from models.core.errors import GdlError


@dataclass(frozen=True)
class Replicas:
    """The devices a run trains on, and the strategy mirroring over them (None: one device,
    no strategy: the code paths of a run without distribution)."""

    count: int
    devices: tuple[str, ...]
    strategy: Any = None

    def scope(self):
        """Where variables (networks, optimizers) must be created or loaded to be mirrored."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def summary(self) -> dict[str, Any]:
        """What the metrics record: how many replicas, and on which devices."""
        return {"replicas": self.count, "devices": list(self.devices)}


def _uses_gpu(device: str) -> bool:
    import tensorflow as tf

    return device != "cpu" and bool(tf.config.list_physical_devices("GPU"))


def reserve_devices(replicas: int, device: str = "auto") -> None:
    """Make `replicas` devices visible before TensorFlow initialises them: nothing to do for one
    replica or on GPUs; on a CPU, split it into `replicas` logical devices. TensorFlow fixes
    its devices at its first operation, so this runs before a technique's first step touches it."""
    import tensorflow as tf

    if replicas <= 1 or _uses_gpu(device):
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    configured = tf.config.get_logical_device_configuration(cpu)
    if configured is not None and len(configured) >= replicas:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
        )
    except RuntimeError:  # TensorFlow already initialised its devices in this process
        have = len(tf.config.list_logical_devices("CPU"))
        if have < replicas:
            raise GdlError(
                f"replicas={replicas} needs {replicas} logical CPU devices but TensorFlow already "
                f"started in this process with {have}: run this technique in its own process "
                f"(gdl run TECHNIQUE, or gdl stage TECHNIQUE train)"
            ) from None


def data_parallel(replicas: int, device: str, batch_size: int) -> Replicas:
    """The devices of a run on `replicas` replicas sharing batches of `batch_size`. `device` is
    what `configure_runtime` returned ('cpu' or 'gpu'). More replicas than GPUs, or a batch that
    does not split evenly, fails in one line (params are checked earlier, naming the technique:
    `DataParallelParams.check_replicas`)."""
    import tensorflow as tf

    if replicas < 1:
        raise GdlError(f"replicas must be >= 1 (got {replicas})")
    if batch_size % replicas:
        raise GdlError(f"batch_size={batch_size} is not divisible by replicas={replicas}")
    kind = "GPU" if device == "gpu" else "CPU"
    if replicas > 1 and kind == "CPU":
        reserve_devices(replicas, "cpu")
    visible = [d.name for d in tf.config.list_logical_devices(kind)]
    if len(visible) < replicas:
        raise GdlError(f"replicas={replicas} but TensorFlow sees {len(visible)} {kind} device(s)")
    if replicas == 1:
        return Replicas(1, (visible[0],))
    chosen = tuple(visible[:replicas])
    strategy = tf.distribute.MirroredStrategy(list(chosen))
    return Replicas(replicas, chosen, strategy)


def synchronize_batch_norm(*models: Any) -> None:
    """Batch statistics over the global batch, not each replica's shard: with them R replicas
    train the networks one device trains. Set before the first training call traces them."""
    import keras

    for model in models:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
            elif hasattr(layer, "layers"):  # a nested model
                synchronize_batch_norm(layer)


def shard(values: Any, replica: int, replicas: int, axis: int = 0) -> Any:
    """Replica `replica`'s equal share of `values` (an array) along `axis`."""
    size = values.shape[axis] // replicas
    index = [slice(None)] * values.ndim
    index[axis] = slice(replica * size, (replica + 1) * size)
    return values[tuple(index)]
