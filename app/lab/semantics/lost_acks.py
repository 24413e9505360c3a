"""The producer-side fault: a produce response lost on its way back to the client.

A fault injection IN THE CLIENT, not a fake broker: every N-th ProduceRequest is really sent,
and the broker really appends its records and answers, but the client is then told the request
timed out (RequestTimedOutError, retriable), as if the answer had been lost in the network.
The seam is aiokafka's sender (aiokafka/producer/sender.py, SendProduceReqHandler.do), which
awaits `self._client.send(node_id, request)` and, on a retriable KafkaError, re-enqueues the
same batch and sends it again. So:
- a producer that is not idempotent appends the batch a second time: duplicates in the log;
- an idempotent one sends it with the same producer id and sequence numbers, and the broker
  answers with the first append's offsets instead of appending again;
- with acks=0 there is no answer to lose: those requests are left alone.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import RequestTimedOutError
from aiokafka.protocol.produce import ProduceRequest


class LostAcks:
    """Lose the answer of every `every`-th produce request of `producer` (wraps its client)."""

    def __init__(self, producer: AIOKafkaProducer, every: int) -> None:
        self.every = every
        self.requests = 0
        self.injected = 0
        client = producer.client
        self._send = client.send
        client.send = self._send_losing_some_answers

    async def _send_losing_some_answers(self, node_id: int, request: Any, **kwargs: Any) -> Any:
        response = await self._send(node_id, request, **kwargs)
        if isinstance(request, ProduceRequest) and request.required_acks != 0:
            self.requests += 1
            if self.requests % self.every == 0:
                self.injected += 1
                msg = "lab fault: the broker appended this request, its answer was lost"
                raise RequestTimedOutError(msg)
        return response
