"""Payments (issue 14, part 2): charge every stored order once at a payment gateway.

The building blocks, each usable alone:
- `charges`: the gateway's wire schemas (shared by the simulator and its client), the charge key;
- `gateway_ledger` + `gateway`: `orders gateway`, a simulated gateway (in memory, idempotent by
  charge key, with latency, errors and timeouts);
- `gateway_client`: a bounded client whose errors are classified in one place (retriable or final);
- `offset_watermark` + `key_ordered`: the key-ordered parallel scheduler (Confluent Parallel
  Consumer's KEY ordering mode, in asyncio) and the commit watermark it keeps per partition.
"""
