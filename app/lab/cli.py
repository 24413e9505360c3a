"""`orders lab <experiment>`: run one experiment (or `all`), print its tables or their JSON.

Each experiment module offers `add_arguments(parser)` and
`async run_from_args(settings, workspace, args) -> list[Table]`; this module only wires them.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from typing import Protocol

from app.errors import OrdersError
from app.lab.report import Table, render_json, render_text
from app.lab.workspace import LabWorkspace, lab_workspace
from app.settings import Settings

# name -> (module, one line of help); `all` runs them in this order.
EXPERIMENTS = {
    "semantics": ("app.lab.semantics", "delivery semantics: lost, doubled, reordered, cost"),
    "partitioning": ("app.lab.partitioning", "keyless, round-robin, keyed, custom partitioners"),
    "groups": ("app.lab.groups", "Exercise 2: groups, sharing, rebalance pauses, static members"),
    "offsets": ("app.lab.offsets", "Exercise 3: manual vs auto-commit after a crash"),
    "analytics": ("app.lab.analytics", "Scenario 2: fast vs exact analytics under kill -9"),
}


class Experiment(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    async def run_from_args(
        self, settings: Settings, workspace: LabWorkspace, args: argparse.Namespace
    ) -> list[Table]: ...


def _experiment(name: str) -> Experiment:
    module: Experiment = importlib.import_module(EXPERIMENTS[name][0])
    return module


def add_lab_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lab = commands.add_parser(
        "lab",
        help="run the course's experiments on the real broker and PostgreSQL (own topics/groups)",
    )
    experiments = lab.add_subparsers(dest="experiment", required=True)
    for name, (_, summary) in EXPERIMENTS.items():
        parser = experiments.add_parser(name, help=summary)
        _common(parser)
        _experiment(name).add_arguments(parser)
    everything = experiments.add_parser("all", help="every experiment with its defaults (make lab)")
    _common(everything)
    lab.set_defaults(handler=run_lab)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the tables as JSON")
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's topics (default: deleted after)"
    )


def run_lab(settings: Settings, args: argparse.Namespace) -> int:
    try:
        tables = asyncio.run(_run(settings, args))
    except OrdersError as exc:
        print(f"orders: lab: {exc}", file=sys.stderr)
        return 1
    print(render_json(tables) if args.json else render_text(tables), flush=True)
    return 0


async def _run(settings: Settings, args: argparse.Namespace) -> list[Table]:
    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    tables: list[Table] = []
    for name in names:
        experiment = _experiment(name)
        if args.experiment == "all":
            # Each experiment's own defaults: parse an empty command line of its parser.
            parser = argparse.ArgumentParser()
            experiment.add_arguments(parser)
            experiment_args = parser.parse_args([])
        else:
            experiment_args = args
        if not args.json:
            print(f"orders lab {name}: running ...", file=sys.stderr, flush=True)
        async with lab_workspace(settings, keep=args.keep) as workspace:
            tables += await experiment.run_from_args(settings, workspace, experiment_args)
    return tables
