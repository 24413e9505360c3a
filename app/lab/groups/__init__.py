"""`orders lab groups`: the course's consumer-group claims, on the real broker.

The course: "Consumers in same group share partition assignment; Each partition consumed by only
one consumer in group; Automatic rebalancing when consumers join/leave" (and Exercise 2).

Three experiments, one module and one table each:
- `sharing`: Exercise 2 as written (two groups, three members, then a fourth member joins);
- `rebalance_pause`: what a member joining costs, per assignor aiokafka has (all eager);
- `static_membership`: a member restarted inside the session timeout, dynamic vs static.
"""

from __future__ import annotations

import argparse

from app.lab.deadline import within
from app.lab.groups import rebalance_pause, sharing, static_membership
from app.lab.report import Table
from app.lab.workspace import LabWorkspace
from app.settings import Settings

__all__ = ["add_arguments", "run_from_args"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--records", type=int, default=6000, help="records written for Exercise 2 (default 6000)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=300.0,
        help="records/s of the steady stream the rebalances happen under (default 300)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="joins measured per assignor (default 3)"
    )
    parser.add_argument(
        "--session-timeout-s",
        type=float,
        default=10.0,
        help="session timeout of the restart experiment (default 10; the broker's minimum, "
        "group.min.session.timeout.ms, is 6 by default)",
    )


def deadline_s(args: argparse.Namespace) -> float:
    """Generous for the sizes asked, so that only a broker that does not answer trips it."""
    joins = len(rebalance_pause.ASSIGNORS) * int(args.repeats)
    return 90 + int(args.records) / 100 + joins * 15 + 3 * float(args.session_timeout_s)


async def run_from_args(
    settings: Settings, workspace: LabWorkspace, args: argparse.Namespace
) -> list[Table]:
    async with within(settings.kafka, "orders lab groups", deadline_s(args)):
        return [
            await sharing.run(settings, workspace, args.records),
            await rebalance_pause.run(settings, workspace, args.rate, args.repeats),
            await static_membership.run(settings, workspace, args.rate, args.session_timeout_s),
        ]
