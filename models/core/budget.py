"""A training step's time budget (`max_train_minutes`)."""

from __future__ import annotations

import time
from collections.abc import Callable

from models.core.errors import BudgetReached


class Budget:
    """A training step's time budget (`max_train_minutes`), counted from when the step started.
    The training loops check it at each checkpoint boundary (an epoch, an iteration): a loop that
    finds it spent checkpoints and raises BudgetReached. None minutes: no budget."""

    def __init__(self, minutes: float | None, clock: Callable[[], float] = time.monotonic):
        self.minutes, self.clock = minutes, clock
        self.started = clock()

    def spent(self) -> bool:
        return self.minutes is not None and self.clock() - self.started >= 60.0 * self.minutes

    def stop(self, done: int, total: int, unit: str) -> BudgetReached:
        return BudgetReached(float(self.minutes or 0.0), done, total, unit)


NO_BUDGET = Budget(None)
