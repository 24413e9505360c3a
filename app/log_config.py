"""Plain, greppable log lines for every process of the stack."""

from __future__ import annotations

import logging


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )
    # aiokafka logs every coordinator retry at WARNING; keep it, but not its DEBUG noise.
    logging.getLogger("aiokafka").setLevel(max(logging.INFO, logging.getLevelName(level)))
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
