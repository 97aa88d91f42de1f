"""The stack-file run's summary as its first ERROR line: its tasks' own failures as warnings.

Prefect logs a failed task's own ERROR lines ("Finished in state Failed(...)",
"Retries are exhausted") when the task ends, before the flow gets the error back, so
no `except` in the flow can come first. In a run that reports its tasks' failures
itself (`reported_by_the_flow`), those lines are logged as warnings instead; the task
runs still end Failed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["reported_by_the_flow"]

# The tasks whose failure `stack_from_file` reports itself, by task name.
_REPORTED_TASKS = frozenset({"find-existing-stacks", "create_target_material", "create_layers"})
# Prefect's own ERROR lines of a failed task run (`prefect.task_engine`).
_TASK_FAILED = ("Finished in state ", "Task run failed with ")


class _ReportedByTheFlow(logging.Filter):
    """Logs a reported task's failure lines as warnings, in the flow runs registered."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: dict[str, int] = {}
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno >= logging.ERROR
            and getattr(record, "task_name", None) in _REPORTED_TASKS
            and getattr(record, "flow_run_id", None) in self.runs
            and isinstance(record.msg, str)
            and record.msg.startswith(_TASK_FAILED)
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_FILTER = _ReportedByTheFlow()


@contextmanager
def reported_by_the_flow(flow_run_id: str | None) -> Iterator[None]:
    """Within it, this flow run's reported tasks log their failure as warnings.

    The flow then logs the summary as the run's first ERROR line. Prefect's task run
    logger (`prefect.task_runs`) logs those lines directly, so a filter on it sees each
    one before any handler, the API's included.
    """
    if flow_run_id is None:
        yield
        return
    logger = logging.getLogger("prefect.task_runs")
    with _FILTER.lock:
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        _FILTER.runs[flow_run_id] = _FILTER.runs.get(flow_run_id, 0) + 1
    try:
        yield
    finally:
        with _FILTER.lock:
            _FILTER.runs[flow_run_id] -= 1
            if not _FILTER.runs[flow_run_id]:
                del _FILTER.runs[flow_run_id]
