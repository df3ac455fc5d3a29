"""One policy for non-finite steps in every training loop: skip the step, give up after N in a row.

A single bad batch (an odd image, an fp16 overflow) should not end a run, but a run whose loss stays NaN
is lost and must stop with a message that says what to try. Under DDP every rank must take the same
decision, or the ranks that step would wait forever in the next all-reduce for the ones that skipped.
Its counts are part of a checkpoint's resume state, so that a resumed run gives up where an uninterrupted
one would.
"""

from __future__ import annotations

import math

import torch

from core.train.distributed import any_rank

DEFAULT_MAX_IN_A_ROW = 20


class NanGuard:
    def __init__(self, max_in_a_row: int = DEFAULT_MAX_IN_A_ROW, *, hint: str = "lower --lr",
                 device: torch.device | str = "cpu"):
        if max_in_a_row < 0:
            raise ValueError(f"the non-finite step limit must be >= 0, got {max_in_a_row}")
        self.max_in_a_row = max_in_a_row
        self.hint = hint
        self.device = device
        self.in_a_row = 0
        self.skipped = 0

    def step_ok(self, *values: float | torch.Tensor, where: str = "") -> bool:
        """True when every value is finite on every rank; False means: skip this step (all ranks do).
        Raises FloatingPointError after more than ``max_in_a_row`` bad steps in a row."""
        finite = all(math.isfinite(float(v)) for v in values)
        bad = any_rank(not finite, self.device)
        if not bad:
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        if self.in_a_row > self.max_in_a_row:
            raise FloatingPointError(f"{self.in_a_row} non-finite steps in a row"
                                     f"{' at ' + where if where else ''}; {self.hint}")
        self.skipped += 1
        return False

    def state_dict(self) -> dict[str, int]:
        return {"in_a_row": self.in_a_row, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        """The counts :meth:`state_dict` saved ({} from a checkpoint without them: counting starts again)."""
        self.in_a_row, self.skipped = int(state.get("in_a_row", 0)), int(state.get("skipped", 0))
