"""What a process exposes to Prometheus: its own metrics, or every API process's (exposition)."""

from app.observability.exposition import (
    MULTIPROCESS_DIR,
    mark_process_dead,
    multiprocess_dir,
    prepare_multiprocess_dir,
    render,
)

__all__ = [
    "MULTIPROCESS_DIR",
    "mark_process_dead",
    "multiprocess_dir",
    "prepare_multiprocess_dir",
    "render",
]
