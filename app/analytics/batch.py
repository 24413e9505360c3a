"""From a fetched batch to what analytics counts: pure rules, no I/O.

Only real orders count, judged exactly as the worker judges them (app.worker.records.prepare):
a record that is not a valid order envelope, or that the broker appended after the order's
acceptance deadline (its client was answered 503: it is not an order), is skipped. Every record
still tells how far its partition's log has got (its broker timestamp), for the watermark.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

from app.analytics.windows import Sale, latest
from app.db.positions import PartitionSpan
from app.worker.fetch_positions import Batch
from app.worker.records import PreparedBatch, append_time

log = logging.getLogger(__name__)

# Epoch milliseconds PostgreSQL and Python can both hold as an instant (years 1970 to 9999).
# A DLQ replay's header may carry any number as the first journey's time.
_LATEST_MS = 253_402_300_799_999


@dataclass(frozen=True)
class CountedBatch:
    spans: list[PartitionSpan]  # the offsets the batch covers, per partition
    sales: dict[int, list[Sale]]  # per partition: the orders that count
    progress: dict[int, int]  # per partition: the latest append time seen there (ms)
    skipped: int = 0  # records that are not orders, or whose time is unusable
    late_appended: int = 0  # of them: appended after their acceptance deadline
    fenced: dict[int, int] = field(default_factory=dict)  # partition -> its stored position
    late: int = 0  # orders added to windows already closed (known once stored)

    def all_sales(self) -> Iterator[Sale]:
        for sales in self.sales.values():
            yield from sales

    @property
    def orders(self) -> int:
        return sum(len(sales) for sales in self.sales.values())

    @property
    def empty(self) -> bool:
        return not self.spans and not self.progress

    def only(self, partitions: set[int]) -> CountedBatch:
        """The part of the batch on these partitions (the ones still assigned)."""
        return replace(
            self,
            spans=[span for span in self.spans if span.partition in partitions],
            sales={p: sales for p, sales in self.sales.items() if p in partitions},
            progress={p: ms for p, ms in self.progress.items() if p in partitions},
        )

    def fenced_off(self, fenced: dict[int, int]) -> CountedBatch:
        """The batch without the partitions another member has moved on (partition -> the
        position it stored): nothing of theirs may be counted."""
        return replace(
            self,
            spans=[span for span in self.spans if span.partition not in fenced],
            sales={p: sales for p, sales in self.sales.items() if p not in fenced},
            progress={p: ms for p, ms in self.progress.items() if p not in fenced},
            fenced=fenced,
        )


def count(prepared: PreparedBatch, batch: Batch, caught_up: Mapping[int, int]) -> CountedBatch:
    """The orders of `prepared` that count, per partition; `batch` (the raw records) gives each
    partition's latest append time; `caught_up`: partitions read to their end, with the instant
    the client last heard so (each counts as having got there)."""
    sales: dict[int, list[Sale]] = {}
    unusable = 0
    for order in prepared.orders:
        append_ms, _ = append_time(order.record)
        if not 0 <= append_ms <= _LATEST_MS:
            unusable += 1
            log.warning(
                "order %s: append time %d ms is not an instant; not counted",
                order.envelope.order_id,
                append_ms,
            )
            continue
        envelope = order.envelope
        # envelope.total is app.contract.order_total(items): the contract refuses any other.
        sales.setdefault(order.partition, []).append(
            Sale(append_ms, envelope.currency, envelope.total)
        )
    seen = latest(
        (tp.partition, record.timestamp)
        for tp, records in batch.items()
        for record in records
        if 0 <= record.timestamp <= _LATEST_MS
    )
    progress = latest([*seen.items(), *caught_up.items()])
    return CountedBatch(
        spans=list(prepared.spans),
        sales=sales,
        progress=progress,
        skipped=len(prepared.poison) + len(prepared.expired) + unusable,
        late_appended=len(prepared.expired),
    )
