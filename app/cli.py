"""The `orders` command: `orders api`, `orders worker`, `orders migrate`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from app.errors import ConfigurationError
from app.logging import configure_logging
from app.settings import Settings, get_settings

log = logging.getLogger("orders")


def _api(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from app.api import create_app

    host = args.host or settings.api.host
    port = args.port or settings.api.port
    print(
        f"orders API on http://{host}:{port}  (OpenAPI docs: http://{host}:{port}/docs)", flush=True
    )
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        access_log=args.access_log,
    )
    return 0


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from app.worker import run_worker

    return asyncio.run(run_worker(settings))


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from app.db.migrate import upgrade_database
    from app.topics import ensure_topics

    upgrade_database(settings.database)
    log.info("database schema is at the newest revision")
    if not args.skip_topics:
        for report in asyncio.run(ensure_topics(settings.kafka)):
            state = "created" if report.created else "exists"
            log.info("topic %s: %s, %d partitions", report.name, state, report.partitions)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orders", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    api = commands.add_parser("api", help="serve the HTTP API (uvicorn, one process)")
    api.add_argument("--host", help="default: API_HOST (127.0.0.1)")
    api.add_argument("--port", type=int, help="default: API_PORT (8000)")
    api.add_argument("--access-log", action="store_true", help="log every request")
    api.set_defaults(handler=_api)

    worker = commands.add_parser("worker", help="run one member of the worker group")
    worker.set_defaults(handler=_worker)

    migrate = commands.add_parser("migrate", help="apply database migrations and create topics")
    migrate.add_argument("--skip-topics", action="store_true", help="only the database")
    migrate.set_defaults(handler=_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except ConfigurationError as exc:
        print(f"orders: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    handler = args.handler
    code: int = handler(settings, args)
    return code


if __name__ == "__main__":
    sys.exit(main())
