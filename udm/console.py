"""What the console scripts keep off the terminal: lines from libraries that the user cannot act on.

Lightning's advertisement for its cloud logger (an INFO "Tip" at every run) and the deprecation warning its own
pytree helper triggers under recent torch. Everything else stays. UDM_VERBOSE=1 shows these too; the filters
are set by the console scripts only (importing udm changes nothing).
"""

from __future__ import annotations

import logging
import os
import warnings

VERBOSE = "UDM_VERBOSE"
NOT_ACTIONABLE_LOGS = ("💡 Tip:",)  # Lightning's advertisement (litlogger / litmodels)
NOT_ACTIONABLE_WARNINGS = (r".*isinstance\(treespec, LeafSpec\)",)  # lightning's _pytree under torch >= 2.9


class DropLines(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.starts)


def quiet_libraries() -> None:
    """Filter the lines above, unless UDM_VERBOSE is set."""
    if os.environ.get(VERBOSE):
        return
    for pattern in NOT_ACTIONABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropLines) for f in logger.filters):
            logger.addFilter(DropLines(NOT_ACTIONABLE_LOGS))
