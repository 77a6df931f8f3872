"""Where cpr_zarr's messages go: Prefect's run logger inside a run, else the ``cpr_zarr`` logger.

Prefect ships only its run loggers to the API (the UI), not other libraries' loggers. A
filter on the ``cpr_zarr`` logger re-emits each record on the run logger of the flow or task
run active in the calling context (and drops the original, so a console shows it once);
outside a run records go through ``cpr_zarr`` as usual. Nothing here imports Prefect: a
run can only be active if Prefect is already loaded.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from cpr_zarr.redact import redact_text

__all__ = ["LOGGER_NAME", "in_prefect_run", "run_logger"]

LOGGER_NAME = "cpr_zarr"


def in_prefect_run() -> bool:
    """Whether a Prefect flow or task run is active in this context."""
    if "prefect.context" not in sys.modules:
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


def run_logger() -> Any | None:
    """The active run's Prefect logger, or None outside a run.

    None too for a task run without a flow run (a background task on a task worker): Prefect
    cannot ship its logs to the API and warns on each record.
    """
    if not in_prefect_run():
        return None
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.logging import get_run_logger

    task_ctx = TaskRunContext.get()
    if FlowRunContext.get() is None and (task_ctx is None or task_ctx.task_run.flow_run_id is None):
        return None

    try:
        return get_run_logger()
    except Exception:  # MissingContextError and friends: no usable run context
        return None


class _ToRunLogger(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        target = run_logger()
        if target is None:
            return True
        # redacted here too: this filter may run before the redacting one, and drops the record
        target.log(record.levelno, redact_text(record.getMessage()), exc_info=record.exc_info)
        return False


def _install() -> None:
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(f, _ToRunLogger) for f in logger.filters):
        logger.addFilter(_ToRunLogger())


_install()
