"""The worker group: Kafka -> one PostgreSQL transaction per batch -> offsets committed after."""

from app.worker.consumer import OrderWorker
from app.worker.runner import run_worker

__all__ = ["OrderWorker", "run_worker"]
