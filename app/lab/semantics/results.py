"""The experiment's table: one row per mode, and a note for each thing a reader must know to
read it (what was done, what each number came from)."""

from __future__ import annotations

from app.lab.report import Cell, Table
from app.lab.semantics.experiment import Cost, Faulted, Options, SemanticsOutcome
from app.lab.semantics.members import Zombie

CLAIM = (
    "At most once: Messages may be lost but never duplicated. "
    "At least once: Messages are never lost but may be duplicated. "
    "Exactly once: Messages are delivered exactly once (requires idempotent producer + "
    "transactions)"
)
COST = (
    "the cost is each consumer loop's own: at-most-once and at-least-once commit PostgreSQL "
    "once per record (autocommitted inserts), exactly-once-postgres once per batch (with an "
    "existence check per event); exactly-once-kafka awaits each output record, then commits "
    "a transaction (offsets included) per batch"
)
COLUMNS = [
    "mode",
    "sent",
    "acknowledged",
    "lost",
    "duplicated",
    "out_of_order",
    "orders_per_s",
    "p50_ms",
    "p99_ms",
    "faults",
    "zombie_fenced",
]


def semantics_table(options: Options, outcome: SemanticsOutcome) -> Table:
    rows: list[dict[str, Cell]] = []
    for name, run in outcome.faulted.items():
        cost = outcome.costs[name]
        rows.append(
            {
                "mode": name,
                "sent": run.tally.sent,
                "acknowledged": run.tally.acknowledged,
                "lost": run.tally.lost,
                "duplicated": run.tally.duplicated,
                "out_of_order": run.tally.out_of_order,
                "orders_per_s": round(cost.orders_per_s, 1) if cost.orders_per_s else None,
                "p50_ms": _ms(cost.p50_ms),
                "p99_ms": _ms(cost.p99_ms),
                "faults": _faults(run, name, outcome.broker_restarted),
                "zombie_fenced": run.zombie.fenced if run.zombie else None,
            }
        )
    return Table(
        title="orders lab semantics: one stream, four delivery modes, the same faults",
        claim=CLAIM,
        columns=COLUMNS,
        rows=rows,
        notes=[
            *_method(options, outcome.broker),
            *_explained(outcome.faulted),
            *_replaced(outcome.faulted),
            COST,
            *_unclean(outcome.costs),
        ],
    )


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _faults(run: Faulted, mode: str, broker_restarted: bool) -> str:
    done = [f"{run.kills} kill -9"]
    if run.zombie:
        done.append("1 zombie")
    if run.crashes:
        done.append(f"{run.crashes} crash" + ("es" if run.crashes > 1 else ""))
    done.append("no acks to lose" if mode == "at-most-once" else f"{run.lost_acks} lost acks")
    if broker_restarted:
        done.append("broker restart")
    return ", ".join(done)


def _method(options: Options, broker: str) -> list[str]:
    return [
        f"lost, duplicated, out_of_order: all four modes at once, each on its own topic, on the "
        f"same {options.events} events over {options.keys} customers (keyed, "
        f"{options.partitions} partitions) sent at {options.rate:g}/s, under the same faults: "
        f"kill -9 of the consumer every {options.kill_every_s:g}s halfway through a batch of up "
        f"to {options.max_records} (restarted at once), every {options.lost_acks_every}th "
        f"produce answer lost on its way back (the client resends the request), {broker}",
        "orders_per_s, p50_ms and p99_ms: each mode alone, without faults. Latency: "
        f"{options.latency_events} events at {options.latency_rate:g}/s (below every mode's "
        "capacity), from send to stored (PostgreSQL's clock_timestamp() of the insert, same "
        "machine) or visible to a read_committed reader (the Kafka way: two hops, and a "
        "transaction to commit); "
        f"orders_per_s: a burst of {options.burst}, first send to last stored or visible",
        "at-most-once's producer uses acks=0, not acks=1: on this single broker (one in-sync "
        "replica) the leader's acknowledgement IS the all-replicas one, so acks=1 would lose "
        "nothing here; acks=1 loses a record only when the leader fails over before a follower "
        "copied it, which needs two brokers or more. acks=0 loses what the broker never took "
        "(a send during the restart), with no answer to tell the producer",
        "acknowledged: what the broker confirmed; acks=0 confirms nothing, so every send counts "
        "(all a fire-and-forget producer knows). A send the client gave up on is reported to "
        "the application: sent, not acknowledged, and not counted as lost",
    ]


def _explained(faulted: dict[str, Faulted]) -> list[str]:
    notes = []
    for mode, run in faulted.items():
        tally = run.tally
        if mode == "at-most-once":
            killed = tally.lost - run.never_in_log
            notes.append(
                f"at-most-once: {tally.lost} lost: {killed} committed before they were "
                f"processed, their member killed mid-batch; {run.never_in_log} sent with acks=0 "
                f"but never in the topic (the client saw {run.failed_sends} sends fail: with "
                f"acks=0 the broker cannot say it refused one); {tally.duplicated} duplicated"
            )
        elif mode == "at-least-once":
            again = tally.duplicated - run.doubled_in_log
            notes.append(
                f"at-least-once: {tally.duplicated} duplicated: {run.doubled_in_log} appended "
                f"twice by the broker (a request resent after its answer was lost, no "
                f"idempotence), {again} stored again after a kill -9 between store and commit; "
                f"{tally.lost} lost"
            )
        else:
            how = (
                "each kill -9 left an uncommitted transaction, redone from PostgreSQL's position"
                if mode == "exactly-once-postgres"
                else "each kill -9 left an open transaction, aborted when the next member's "
                "producer started with the same transactional_id"
            )
            notes.append(
                f"{mode}: {how}; {run.lost_acks} answers lost, {run.doubled_in_log} events "
                f"doubled in the log (idempotent producer); {_zombie(run.zombie, run)}"
            )
    return notes


def _replaced(faulted: dict[str, Faulted]) -> list[str]:
    return [
        f"{mode}: its source producer died and was replaced (its sends all failed after its "
        f"sender task ended on: {', '.join(run.producer_deaths)})"
        for mode, run in faulted.items()
        if run.producer_deaths
    ]


def _zombie(zombie: Zombie | None, run: Faulted) -> str:
    if zombie is None:
        return "no zombie (the run ended first)"
    outcome = (
        "was fenced (its write refused) and left"
        if zombie.fenced
        else f"was NOT fenced (exit status {zombie.exit_status})"
    )
    return (
        f"zombie {zombie.instance}, frozen in its batch {zombie.batch} while a newer member "
        f"took over, woken: it {outcome}; {run.zombie_writes_visible} of its writes visible"
    )


def _unclean(costs: dict[str, Cost]) -> list[str]:
    return [
        f"{mode}'s run without faults was not clean: {cost.tally}"
        for mode, cost in costs.items()
        if cost.tally.lost or cost.tally.duplicated or cost.tally.out_of_order
    ]
