"""Real-time analytics: revenue per currency in tumbling windows, a consumer group of its own.

Kafka `orders` -> count each batch's orders into one-minute windows by the broker's append time
-> PostgreSQL (revenue_windows) -> GET /analytics/revenue. Two modes: fast (auto-commit, the
course's Scenario 2) and exact (windows and positions in one transaction).
"""

from app.analytics.runner import run_analytics

__all__ = ["run_analytics"]
