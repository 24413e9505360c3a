"""The `orders` command.

Processes: `orders api`, `orders worker`, `orders analytics`, `orders payments`,
`orders migrate`, `orders gateway` (a simulator).
Operations: `orders lag`, `orders offsets reset|delete`, `orders dlq list|replay`,
`orders skipped`, `orders topics grow`.
The course's experiments: `orders lab semantics|partitioning|groups|offsets|all`.
Development: `orders token` (a bearer token signed with the local key).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from app.errors import ConfigurationError, OrdersError
from app.lab.cli import add_lab_parser
from app.log_config import configure_logging
from app.operations import commands as operations
from app.settings import MAX_API_WORKERS, Settings, get_settings

log = logging.getLogger("orders")


def _api(settings: Settings, args: argparse.Namespace) -> int:
    from app.observability import multiprocess_dir
    from app.observability.dir_lock import hold_multiprocess_dir

    workers = args.workers or settings.api.workers
    shared = multiprocess_dir() if workers > 1 else None
    with contextlib.ExitStack() as held:
        if shared is not None:
            # The operator's folder for the processes: the import below makes this parent's
            # metrics as files there (prometheus-client's multiprocess mode), so it must exist
            # first; then app/api/process_set.py empties it of them, and of an earlier run's,
            # before they start. Locked before that import: a second parent given the folder of
            # a running set is refused before it writes anything there.
            Path(shared).mkdir(parents=True, exist_ok=True)
            try:
                held.enter_context(hold_multiprocess_dir(shared))
            except ConfigurationError as exc:
                print(f"orders: api: {exc}", file=sys.stderr)
                return 2
        from app.api import create_app
        from app.api.http_server import serve, serve_processes

        host = args.host or settings.api.host
        port = args.port or settings.api.port
        print(
            f"orders API on http://{host}:{port}  (OpenAPI docs: http://{host}:{port}/docs), "
            f"{workers} process{'es' if workers > 1 else ''}",
            flush=True,
        )
        if workers > 1:
            serve_processes(settings, host, port, args.access_log, workers)
            return 0
        # `--workers 1` under API_WORKERS=N: one process, whatever the environment says.
        one = settings.model_copy(update={"api": settings.api.model_copy(update={"workers": 1})})
        serve(create_app(one), one, host, port, access_log=args.access_log)
        return 0


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from app.worker import run_worker

    return asyncio.run(run_worker(settings))


def _analytics(settings: Settings, args: argparse.Namespace) -> int:
    from app.analytics import run_analytics

    return asyncio.run(run_analytics(settings, group_instance_id=args.group_instance_id))


def _payments(settings: Settings, args: argparse.Namespace) -> int:
    import uvloop

    from app.payments.runner import run_payments

    return uvloop.run(run_payments(settings))


def _gateway(settings: Settings, args: argparse.Namespace) -> int:
    from app.payments.gateway import GatewayBehaviour, serve_gateway

    behaviour = GatewayBehaviour.from_settings(
        settings.gateway, seed=args.seed, timeout_answer_s=args.timeout_answer_s
    )
    host = args.host or settings.gateway.host
    port = args.port or settings.gateway.port
    print(f"simulated payment gateway on http://{host}:{port} (in memory)", flush=True)
    serve_gateway(behaviour, host, port, settings.log_level)
    return 0


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError
    from sqlalchemy.exc import SQLAlchemyError

    from app.db.migrate import upgrade_database
    from app.topics import ensure_topics, register_intake

    upgrade_database(settings.database)
    log.info("database schema is at the newest revision")
    if args.skip_topics:
        return 0
    try:
        reports = asyncio.run(ensure_topics(settings.kafka, settings.payments.topic))
        # The API produces with the partition count registered here (app/api/intake.py).
        asyncio.run(register_intake(settings, reports))
    except (OrdersError, KafkaError, SQLAlchemyError, OSError) as exc:
        # A topic we cannot hold to its configs must stop the deployment, not warn.
        print(f"orders: migrate: {exc}", file=sys.stderr)
        return 1
    for report in reports:
        state = "created" if report.created else "exists"
        changed = f", set {len(report.changes)} config(s)" if report.changes else ""
        log.info("topic %s: %s, %d partitions%s", report.name, state, report.partitions, changed)
    return 0


def _token(settings: Settings, args: argparse.Namespace) -> int:
    # Imported here, not for every command: PyJWT and cryptography take ~0.1 s to load.
    from app.auth import SCOPES, local_token
    from app.auth.minting import MAX_TTL_S

    unknown = sorted(set(args.scope) - set(SCOPES))
    if unknown:
        print(
            f"orders: token: unknown scope {unknown}; known: {', '.join(SCOPES)}", file=sys.stderr
        )
        return 2
    if not 0 < args.ttl <= MAX_TTL_S:
        print(f"orders: token: --ttl must be 1 to {MAX_TTL_S} seconds", file=sys.stderr)
        return 2
    if settings.auth.jwks_file is not None or settings.auth.jwks_url is not None:
        print(
            "orders: token: AUTH_JWKS_FILE/AUTH_JWKS_URL is set, so the API verifies with "
            "those keys and will refuse this token (signed with the local key)",
            file=sys.stderr,
        )
    token = local_token(
        settings.auth,
        args.subject,
        args.scope,
        customer=args.customer,
        client_id=args.client_id,
        ttl_s=args.ttl,
    )
    print(token)
    return 0


_LAG_DESCRIPTION = """\
Lag (log end minus the position stored in PostgreSQL) and a status per partition:
  OK       no lag, or the stored position keeps moving
  WARNING  the position moves but the lag grew at every sample of a window of
           WORKER_LAG_WINDOW samples: only --watch (which keeps the window) shows it
  STALLED  lag, and the stored position has not moved for the stall bound since the
           lag began, while its owner still stores positions on other partitions
  STOPPED  the same, and the owner has stored nothing anywhere for the bound (or no
           member ever stored this partition)
Exit code: 0 every partition OK or WARNING; 3 one is STALLED or STOPPED;
1 Kafka or PostgreSQL could not be read. --watch exits 0 on Ctrl-C."""


def _api_workers(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= MAX_API_WORKERS:
        msg = f"must be 1 to {MAX_API_WORKERS}, got {raw}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _seconds(raw: str) -> float:
    value = float(raw)
    if not 0 < value < float("inf"):
        msg = f"must be a positive number of seconds, got {raw}"
        raise argparse.ArgumentTypeError(msg)
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orders", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    api = commands.add_parser(
        "api", help="serve the HTTP API (uvicorn; --workers N: N processes on one port)"
    )
    api.add_argument("--host", help="default: API_HOST (127.0.0.1)")
    api.add_argument("--port", type=int, help="default: API_PORT (8000)")
    api.add_argument(
        "--workers",
        type=_api_workers,
        metavar="N",
        help="API processes sharing the port, their metrics, rate limits and readiness "
        "(default: API_WORKERS, 1)",
    )
    api.add_argument("--access-log", action="store_true", help="log every request")
    api.set_defaults(handler=_api)

    worker = commands.add_parser("worker", help="run one member of the worker group")
    worker.set_defaults(handler=_worker)

    analytics = commands.add_parser(
        "analytics",
        help="run one member of the analytics group: revenue per currency in tumbling windows "
        "(ANALYTICS_*; ANALYTICS_MODE=exact|fast)",
    )
    analytics.add_argument(
        "--group-instance-id",
        help="a static member's id (KIP-345): restarted under it, the member gets its "
        "partitions back without a rebalance",
    )
    analytics.set_defaults(handler=_analytics)

    payments = commands.add_parser(
        "payments",
        help="run one member of the payments group: charge every order once at the gateway, "
        "one `payments` event per order, in Kafka transactions (PAYMENTS_*)",
    )
    payments.set_defaults(handler=_payments)

    gateway = commands.add_parser(
        "gateway", help="serve the simulated payment gateway (GATEWAY_*; in memory)"
    )
    gateway.add_argument("--host", help="default: GATEWAY_HOST (127.0.0.1)")
    gateway.add_argument("--port", type=int, help="default: GATEWAY_PORT (8300)")
    gateway.add_argument("--seed", type=int, help="seed the error and timeout draws")
    gateway.add_argument(
        "--timeout-answer-s",
        type=_seconds,
        default=60.0,
        help="an injected timeout's answer comes this late (default 60)",
    )
    gateway.set_defaults(handler=_gateway)

    migrate = commands.add_parser("migrate", help="apply database migrations and create topics")
    migrate.add_argument("--skip-topics", action="store_true", help="only the database")
    migrate.set_defaults(handler=_migrate)

    lag_parser = commands.add_parser(
        "lag",
        help="per-partition lag and status of the worker group",
        description=_LAG_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lag_shape = lag_parser.add_mutually_exclusive_group()
    lag_shape.add_argument("--json", action="store_true", help="a JSON array, one per partition")
    lag_shape.add_argument(
        "--watch", action="store_true", help="a live view refreshed in place (Ctrl-C quits)"
    )
    lag_parser.add_argument(
        "--interval", type=_seconds, default=2.0, metavar="S", help="--watch: every S (default 2)"
    )
    lag_parser.add_argument(
        "--stall-after",
        type=_seconds,
        metavar="S",
        help="default: WORKER_STALL_AFTER_S (30), the worker's own bound",
    )
    lag_parser.set_defaults(handler=operations.lag)

    offsets = commands.add_parser("offsets", help="the worker group's offsets")
    offsets_commands = offsets.add_subparsers(dest="offsets_command", required=True)
    reset = offsets_commands.add_parser(
        "reset", help="move the group's positions (plan, then --execute with workers stopped)"
    )
    to = reset.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true")
    to.add_argument("--to-latest", action="store_true")
    to.add_argument("--to-offset", type=int, metavar="N")
    to.add_argument("--shift-by", type=int, metavar="N", help="negative to replay")
    reset.add_argument("--partition", type=int, action="append", help="repeatable; default all")
    reset.add_argument(
        "--group", help="a group whose positions PostgreSQL holds (default: WORKER_GROUP_ID)"
    )
    reset.add_argument("--execute", action="store_true", help="apply the plan")
    reset.set_defaults(handler=operations.offsets_reset)
    delete = offsets_commands.add_parser(
        "delete",
        help="delete a group's positions in PostgreSQL and the group in Kafka (plan, then "
        "--execute with its members stopped)",
    )
    delete.add_argument("--group", help="default: WORKER_GROUP_ID (the worker group)")
    delete.add_argument("--execute", action="store_true", help="delete it")
    delete.set_defaults(handler=operations.offsets_delete)

    dlq = commands.add_parser(
        "dlq", help="records set aside: the dead-letter topic and PostgreSQL's quarantine"
    )
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    listing = dlq_commands.add_parser(
        "list", help="show dead letters and quarantined records with their provenance"
    )
    listing.add_argument(
        "--start", type=int, default=0, help="first dead-letter offset (default 0)"
    )
    listing.add_argument("--limit", type=int, default=50, help="per place (default 50)")
    listing.add_argument(
        "--all", action="store_true", help="quarantined records already replayed too"
    )
    listing.set_defaults(handler=operations.dlq_list)
    replay = dlq_commands.add_parser(
        "replay", help="send one record back to the orders topic (plan, then --execute)"
    )
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--offset", type=int, help="a dead letter's offset in the DLQ topic")
    which.add_argument("--quarantined", type=int, metavar="ID", help="a quarantined record's id")
    replay.add_argument("--execute", action="store_true", help="send it")
    replay.set_defaults(handler=operations.dlq_replay)

    skipped = commands.add_parser(
        "skipped", help="offset ranges the worker group passed without a record, and why"
    )
    skipped.add_argument("--partition", type=int, action="append", help="repeatable; default all")
    skipped.add_argument("--limit", type=int, default=100, help="ranges shown (default 100)")
    skipped.set_defaults(handler=operations.skipped)

    topics = commands.add_parser("topics", help="the orders topic's partitions")
    topics_commands = topics.add_subparsers(dest="topics_command", required=True)
    grow = topics_commands.add_parser(
        "grow",
        help="add partitions without breaking any customer's order: intake paused (503), "
        "workers drained, partitions added, intake resumed (plan, then --execute)",
    )
    grow.add_argument(
        "--partitions", type=int, required=True, metavar="N", help="the new partition count"
    )
    grow.add_argument("--execute", action="store_true", help="grow (the plan otherwise)")
    grow.add_argument(
        "--timeout",
        type=_seconds,
        default=120.0,
        metavar="S",
        help="give up (intake resumed, nothing changed) if the API processes and the groups "
        "have not drained within S (default 120)",
    )
    grow.set_defaults(handler=operations.topics_grow)

    add_lab_parser(commands)

    token = commands.add_parser(
        "token",
        help="print a bearer access token signed with the local key (AUTH_LOCAL_KEY_FILE, "
        "created on first use), for development and tests",
    )
    token.add_argument("--subject", required=True, help="the token's sub (who it names)")
    token.add_argument(
        "--scope", action="append", required=True, help="orders:write or orders:read; repeatable"
    )
    token.add_argument(
        "--customer", help="the customer it acts for (customer_id); default: any (a service)"
    )
    token.add_argument("--client-id", help="the client application's id; default: the subject")
    token.add_argument(
        "--ttl", type=int, default=3600, help="seconds (default 3600, at most 7 days)"
    )
    token.set_defaults(handler=_token)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except ConfigurationError as exc:
        print(f"orders: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if args.command in {"lag", "offsets", "dlq", "skipped", "lab", "topics"}:
        # Operator commands print tables; the client's connection chatter would drown them.
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
    if args.command == "lab":
        # The lab forms and breaks groups on purpose: "Heartbeat failed ... rebalancing" is the
        # subject of the experiment, reported in its tables, not a warning to the reader.
        logging.getLogger("aiokafka").setLevel(logging.ERROR)
        # A member subscribing to a topic created a moment before may log "Topic ... not found
        # in cluster metadata" once, until its metadata catches up: noise, not a lab error.
        logging.getLogger("aiokafka.cluster").setLevel(logging.CRITICAL)
    handler = args.handler
    code: int = handler(settings, args)
    return code


if __name__ == "__main__":
    sys.exit(main())
