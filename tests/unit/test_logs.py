"""Our records in Serve's replica log files, with Ray Serve's real logging set-up (no Ray
started): ``configure_component_logger`` is what a replica runs at start and again when
a deployment's ``logging_config`` changes in place (``reconfigure``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray.serve._private.logging_utils import configure_component_logger
from ray.serve.schema import LoggingConfig

from modelship.core import ray_compat
from modelship.core.logs import to_serve_logs


@pytest.fixture
def serve_logs(tmp_path: Path) -> Iterator[Path]:
    """Serve's logger and ours, restored afterwards (other tests read ``modelship`` records
    with caplog); Serve's log files go under ``tmp_path``."""
    loggers = [logging.getLogger(ray_compat.serve_logger_name()), logging.getLogger("modelship")]
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    yield tmp_path
    for lg, handlers, level, propagate in saved:
        for handler in lg.handlers:
            if handler not in handlers:
                handler.close()
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def _configure(logs_dir: Path, **config: str) -> None:
    configure_component_logger(
        component_name="modelship_Ingress",
        component_id="r1",
        logging_config=LoggingConfig(logs_dir=str(logs_dir), **config),
        max_bytes=10_000_000,
        backup_count=1,
    )


def _lines(logs_dir: Path, text: str) -> list[str]:
    return [
        line
        for path in logs_dir.glob("*.log")
        for line in path.read_text().splitlines()
        if text in line
    ]


def test_our_records_follow_serve_s_logging_config_when_it_changes_in_place(
    serve_logs: Path,
) -> None:
    _configure(serve_logs, encoding="TEXT")
    to_serve_logs()
    logging.getLogger("modelship.test").warning("before the change")
    (before,) = _lines(serve_logs, "before the change")
    assert not before.startswith("{")

    # serve deploy with logging_config.encoding JSON: Serve swaps its handlers in place,
    # the replica (and its to_serve_logs call) stays
    _configure(serve_logs, encoding="JSON")
    logging.getLogger("modelship.test").warning("after the change")
    (after,) = _lines(serve_logs, "after the change")
    record = json.loads(after)
    assert record["message"] == "after the change" and record["levelname"] == "WARNING"
    assert record["component_name"] == "modelship_Ingress"

    to_serve_logs()  # idempotent
    logging.getLogger("modelship.test").warning("called twice")
    assert len(_lines(serve_logs, "called twice")) == 1

    # Serve's log_level applies to our records as to Serve's own
    _configure(serve_logs, encoding="JSON", log_level="WARNING")
    logging.getLogger("modelship.test").info("quiet now")
    assert _lines(serve_logs, "quiet now") == []
