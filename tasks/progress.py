"""Progress of long stages in the terminal (run logger) and in the Prefect UI (progress artifact)."""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

_MIN_INTERVAL_S = 2.0


def run_logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    """The Prefect run logger inside a run (it reaches the terminal and the UI), else a plain one."""
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:
        return logging.getLogger("metapt")


class StageProgress:
    """A ``progress(done, total, message)`` callback for core functions.

    Logs and updates the Prefect progress artifact at most every two seconds (and at the end);
    UI errors are swallowed so that progress reporting can never fail a stage.
    """

    def __init__(self, stage: str, description: str = "") -> None:
        self.stage = stage
        self.logger = run_logger()
        self._last = 0.0
        self._lock = threading.Lock()
        self._artifact_id: Any = None
        try:
            from prefect.artifacts import create_progress_artifact
            from prefect.context import TaskRunContext

            if TaskRunContext.get() is not None:
                key = re.sub(r"[^a-z0-9-]", "-", f"{stage}-progress".lower())
                self._artifact_id = create_progress_artifact(
                    0.0, key=key, description=description or f"{stage}: starting"
                )
        except Exception:
            self._artifact_id = None

    def __call__(self, done: int, total: int, message: str = "") -> None:
        now = time.monotonic()
        finished = total > 0 and done >= total
        with self._lock:
            if not finished and now - self._last < _MIN_INTERVAL_S:
                return
            self._last = now
        percent = 100.0 * done / total if total > 0 else 0.0
        self.logger.info("%s: %d/%d (%.0f%%) %s", self.stage, done, total, percent, message)
        if self._artifact_id is not None:
            try:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(
                    self._artifact_id, min(percent, 100.0), description=f"{self.stage}: {message}"
                )
            except Exception:
                self._artifact_id = None
