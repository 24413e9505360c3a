"""Header names of a dead letter: where it came from, why it was refused, and its replays.

The worker writes them (app.worker.dlq_publisher), the operator commands read them
(app.operations.dlq), and the worker reads two of them back on a replayed record
(app.worker.records). One module, so the three cannot drift apart.
Names follow Kafka Connect's dead-letter convention where one exists.
"""

from __future__ import annotations

H_TOPIC = "dlq.original.topic"
H_PARTITION = "dlq.original.partition"
H_OFFSET = "dlq.original.offset"
H_TIMESTAMP = "dlq.original.timestamp"
H_TIMESTAMP_TYPE = "dlq.original.timestamp.type"
H_ERROR_CLASS = "dlq.error.class"
H_ERROR_MESSAGE = "dlq.error.message"
H_WORKER = "dlq.worker"
H_FAILED_AT = "dlq.failed.at"
# Set by `orders dlq replay` on a record it sends back to the orders topic.
H_REPLAYED_FROM = "dlq.replayed.from"
