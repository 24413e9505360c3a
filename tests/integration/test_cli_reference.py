"""The course's CLI reference, mapped (README, "The course's CLI, mapped"): each `confluent local`
command's equivalent here, run for real against the broker, with its effect checked.

Kafka's own tools (`scripts/kafka-cli`, ~1 s of JVM start each) run as an operator would type
them, with KAFKA_BOOTSTRAP_SERVERS in the environment; the worker group's offsets go through
`orders` commands. Every test works on topics and groups of its own (`lab-cli-<run>`).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import tempfile
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy.ext.asyncio import AsyncEngine

from app.settings import Settings
from tests.integration.endpoints import Endpoints
from tests.integration.kafka_tools import end_offsets, non_empty
from tests.integration.load import customers_for, orders_accepted
from tests.integration.oracle import stored_positions, wait_until_stored
from tests.integration.processes import ORDERS, settings_env
from tests.integration.test_abuse_limits import free_port_pair
from tests.integration.throwaway import ROOT, throwaway_cluster
from tests.integration.waiting import eventually
from tests.integration.worker_harness import committed_offsets, worker_running

KAFKA_CLI = str(ROOT / "scripts" / "kafka-cli")


def tool_env(bootstrap: str) -> dict[str, str]:
    return {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}


async def kafka_cli(
    bootstrap: str, tool: str, *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`scripts/kafka-cli TOOL ARGS`, the broker named by the environment as in the README."""
    return await asyncio.to_thread(
        subprocess.run,
        [KAFKA_CLI, tool, *args],
        input=stdin,
        env=tool_env(bootstrap),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def ok(bootstrap: str, tool: str, *args: str, stdin: str | None = None) -> str:
    done = await kafka_cli(bootstrap, tool, *args, stdin=stdin)
    assert done.returncode == 0, (tool, args, done.stdout, done.stderr)
    return done.stdout


async def orders(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [ORDERS, *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def table(output: str) -> list[dict[str, str]]:
    """The rows of a kafka-consumer-groups table, by column name."""
    rows: list[dict[str, str]] = []
    header: list[str] = []
    for line in output.splitlines():
        fields = line.split()
        if fields[:1] == ["GROUP"]:
            header = fields
        elif header and len(fields) == len(header):
            rows.append(dict(zip(header, fields, strict=True)))
    return rows


@pytest.fixture
async def bootstrap(endpoints: Endpoints) -> str:
    return endpoints.kafka_bootstrap


@pytest.fixture
async def topic(bootstrap: str, run_id: str) -> AsyncIterator[str]:
    """`lab-cli-<run>`, 6 partitions, deleted after the test."""
    name = f"lab-cli-{run_id}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 6, 1)])
    finally:
        await admin.close()
    yield name
    await drop_topic(bootstrap, name)


async def drop_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([name])
    finally:
        await admin.close()


async def produced(bootstrap: str, topic: str, values: list[str], keyed: bool = True) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for n, value in enumerate(values):
            key = f"k{n}".encode() if keyed else None
            await producer.send(topic, value.encode(), key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def test_topic_create_describe_update_and_configuration_list(
    bootstrap: str, run_id: str
) -> None:
    topic = f"lab-cli-{run_id}-create"
    created = await ok(
        bootstrap,
        "topics",
        "--create",
        "--topic",
        topic,
        "--partitions",
        "6",
        "--replication-factor",
        "1",
        "--config",
        "retention.ms=86400000",
        "--config",
        "compression.type=snappy",
    )
    try:
        assert f"Created topic {topic}" in created
        described = await ok(bootstrap, "topics", "--describe", "--topic", topic)
        assert "PartitionCount: 6" in described
        assert "ReplicationFactor: 1" in described
        assert "retention.ms=86400000" in described
        assert "compression.type=snappy" in described

        await ok(
            bootstrap, "configs", "--alter", "--topic", topic, "--add-config", "segment.ms=3600000"
        )
        listed = await ok(bootstrap, "configs", "--describe", "--all", "--topic", topic)
        configs = dict(re.findall(r"^  ([a-z.]+)=(\S*) ", listed, re.MULTILINE))
        assert configs["segment.ms"] == "3600000"
        assert configs["retention.ms"] == "86400000"
        assert configs["compression.type"] == "snappy"
        assert configs["cleanup.policy"] == "delete"  # --all: the defaults too
    finally:
        await drop_topic(bootstrap, topic)


async def test_produce_plain_keyed_and_with_headers_then_consume_them_back(
    bootstrap: str, topic: str
) -> None:
    # Exercise 1, experiment 1, in one producer process (the course's loop starts ten JVMs).
    unkeyed_lines = "".join(f"Message {i} without key\n" for i in range(1, 11))
    await ok(bootstrap, "console-producer", "--topic", topic, stdin=unkeyed_lines)
    unkeyed = non_empty(await end_offsets(bootstrap, topic))
    assert sum(unkeyed.values()) == 10
    # Java's default partitioner is sticky for keyless records (one batch, one partition):
    # not the round-robin the course names, which would touch all 6.
    assert len(unkeyed) < 6

    # Experiment 2, and the course's producer config (compression) as a client property.
    users = ("user1", "user2", "user3")
    keyed_lines = "".join(f"{user}:Action {i}\n" for user in users for i in range(1, 6))
    keyed = ("--reader-property", "parse.key=true", "--reader-property", "key.separator=:")
    await ok(
        bootstrap,
        "console-producer",
        *("--topic", topic, *keyed),
        *("--command-property", "compression.type=snappy"),
        stdin=keyed_lines,
    )
    # Headers: a line is headers, headers.delimiter (a tab), then key:value; and headers.separator
    # is a regular expression (Java's String.split), so the course's `|` must be escaped.
    headers = (
        *keyed,
        *("--reader-property", "parse.headers=true"),
        *("--reader-property", "headers.key.separator=:"),
    )
    line_with_headers = "source:web|trace:t-1\tuser9:clicked\n"
    await ok(
        bootstrap,
        "console-producer",
        *("--topic", topic, *headers, "--reader-property", r"headers.separator=\|"),
        stdin=line_with_headers,
    )
    as_in_the_course = ("--topic", topic, *headers, "--reader-property", "headers.separator=|")
    course_line, unescaped = await asyncio.gather(
        kafka_cli(bootstrap, "console-producer", *as_in_the_course, stdin="key:value\n"),
        kafka_cli(bootstrap, "console-producer", *as_in_the_course, stdin=line_with_headers),
    )
    assert course_line.returncode != 0
    assert "No headers delimiter found on line number 1: 'key:value'" in course_line.stderr
    assert unescaped.returncode != 0
    assert "No header key separator found in pair 's'" in unescaped.stderr  # split at every ""

    printed, first_ten = await asyncio.gather(
        ok(
            bootstrap,
            "console-consumer",
            *("--topic", topic, "--from-beginning", "--max-messages", "26"),
            *("--formatter-property", "print.key=true"),
            *("--formatter-property", "print.partition=true"),
            *("--formatter-property", "print.headers=true"),
        ),
        kafka_cli(
            bootstrap,
            "console-consumer",
            *("--topic", topic, "--from-beginning", "--max-messages", "10"),
        ),
    )
    # Each line: Partition:P <TAB> headers <TAB> key <TAB> value ("NO_HEADERS", "null" key).
    lines = [line.split("\t") for line in printed.splitlines()]
    assert Counter(key for _, _, key, _ in lines) == {
        "null": 10,
        "user1": 5,
        "user2": 5,
        "user3": 5,
        "user9": 1,
    }
    partitions_of: defaultdict[str, set[str]] = defaultdict(set)
    for partition, _, key, value in lines:
        partitions_of[key].add(partition)
        assert value.startswith("Action ") == (key in users)
    assert all(len(partitions_of[user]) == 1 for user in users)  # a key, one partition
    [with_headers] = [line for line in lines if line[2] == "user9"]
    assert with_headers[1:] == ["source:web,trace:t-1", "user9", "clicked"]

    assert first_ten.returncode == 0, first_ten.stderr
    assert len(first_ten.stdout.splitlines()) == 10
    assert "Processed a total of 10 messages" in first_ten.stderr


async def test_the_basic_consumer_reads_what_arrives_after_it_starts(
    bootstrap: str, topic: str
) -> None:
    await produced(bootstrap, topic, ["before"])
    consumer = await asyncio.create_subprocess_exec(
        KAFKA_CLI,
        "console-consumer",
        "--topic",
        topic,
        "--max-messages",
        "1",
        env=tool_env(bootstrap),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    waiting = asyncio.create_task(consumer.communicate())
    try:
        # It starts at the log's end once assigned: keep sending until it has read one.
        async with asyncio.timeout(30):
            while not waiting.done():
                await produced(bootstrap, topic, ["after"])
                await asyncio.sleep(0.5)
        out, _ = await waiting
    finally:
        if consumer.returncode is None:
            consumer.kill()
            await consumer.wait()
    assert out.decode().split() == ["after"]


async def test_groups_each_read_everything_members_of_one_share_the_partitions(
    bootstrap: str, topic: str, run_id: str
) -> None:
    """Exercise 2: two groups, then two members of one group; Exercise 4 lists and describes."""
    await produced(bootstrap, topic, [f"event {n}" for n in range(30)])
    group_a, group_b = f"lab-cli-{run_id}-a", f"lab-cli-{run_id}-b"
    read_a, read_b = await asyncio.gather(
        *(
            ok(
                bootstrap,
                "console-consumer",
                "--topic",
                topic,
                "--group",
                group,
                "--from-beginning",
                "--max-messages",
                "30",
            )
            for group in (group_a, group_b)
        )
    )
    assert sorted(read_a.splitlines()) == sorted(read_b.splitlines())
    assert len(set(read_a.splitlines())) == 30

    shared = f"lab-cli-{run_id}-shared"
    members = [
        await asyncio.create_subprocess_exec(
            KAFKA_CLI,
            "console-consumer",
            "--topic",
            topic,
            "--group",
            shared,
            "--from-beginning",
            env=tool_env(bootstrap),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    try:
        shares: list[int] = []
        async with asyncio.timeout(45):
            while shares != [3, 3]:
                await asyncio.sleep(1)
                described = await ok(
                    bootstrap, "consumer-groups", "--describe", "--members", "--group", shared
                )
                shares = sorted(int(row["#PARTITIONS"]) for row in table(described))
    finally:
        for member in members:
            if member.returncode is None:
                member.send_signal(signal.SIGTERM)
        for member in members:
            async with asyncio.timeout(20):
                await member.wait()

    listed, described_a = await asyncio.gather(
        ok(bootstrap, "consumer-groups", "--list"),
        ok(bootstrap, "consumer-groups", "--describe", "--group", group_a),
    )
    assert {group_a, group_b, shared} <= set(listed.split())
    rows = table(described_a)
    assert len(rows) == 6
    assert {row["LAG"] for row in rows} == {"0"}
    assert sum(int(row["CURRENT-OFFSET"]) for row in rows) == 30
    await ok(
        bootstrap,
        "consumer-groups",
        "--delete",
        *("--group", group_a, "--group", group_b, "--group", shared),
    )


async def group_offsets(bootstrap: str, group: str) -> dict[int, int]:
    """The group's committed offsets (in-process: what the tool under test did, checked)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items()}


async def test_consumer_configs_then_group_reset_and_delete(
    bootstrap: str, topic: str, run_id: str
) -> None:
    """The course passes consumer configs with --property; Kafka's tool gives --property to the
    formatter (which ignores them) and takes client configs with --command-property."""
    await produced(bootstrap, topic, [f"order {n}" for n in range(12)])
    course, meant, manual = (f"lab-cli-{run_id}-{name}" for name in ("course", "my", "manual"))
    by_property, by_command_property, without_commits = await asyncio.gather(
        kafka_cli(
            bootstrap,
            "console-consumer",
            *("--topic", topic, "--group", course),
            *("--property", "auto.offset.reset=earliest"),
            *("--property", "session.timeout.ms=30000"),
            *("--timeout-ms", "4000"),
        ),
        kafka_cli(
            bootstrap,
            "console-consumer",
            *("--topic", topic, "--group", meant),
            *("--command-property", "auto.offset.reset=earliest"),
            *("--command-property", "session.timeout.ms=30000"),
            *("--max-messages", "12"),
        ),
        kafka_cli(  # Exercise 3: "manual" commits
            bootstrap,
            "console-consumer",
            *("--topic", topic, "--group", manual, "--from-beginning"),
            *("--command-property", "enable.auto.commit=false"),
            *("--max-messages", "12"),
        ),
    )
    # A new group starts at the log's end: the course's property never reached the consumer.
    assert "order" not in by_property.stdout
    assert "Use --formatter-property instead" in by_property.stdout
    assert "Processed a total of 0 messages" in by_property.stderr
    assert len(by_command_property.stdout.splitlines()) == 12
    assert len(without_commits.stdout.splitlines()) == 12
    assert sum((await group_offsets(bootstrap, meant)).values()) == 12
    assert await group_offsets(bootstrap, manual) == {}  # the console tool never commits by hand

    reset = ("--reset-offsets", "--group", meant, "--topic", topic, "--to-earliest")
    planned = await ok(bootstrap, "consumer-groups", *reset)
    assert {row["NEW-OFFSET"] for row in table(planned)} == {"0"}
    assert sum((await group_offsets(bootstrap, meant)).values()) == 12  # a dry run
    await ok(bootstrap, "consumer-groups", *reset, "--execute")
    assert set((await group_offsets(bootstrap, meant)).values()) == {0}

    deleted = await ok(bootstrap, "consumer-groups", "--delete", "--group", meant)
    assert f"Deletion of requested consumer groups ('{meant}') was successful" in deleted
    assert await group_offsets(bootstrap, meant) == {}
    await ok(bootstrap, "consumer-groups", "--delete", "--group", course, "--group", manual)

    # The README: it exits 0 for a group that does not exist (it says so, on stdout, only).
    gone = await ok(bootstrap, "consumer-groups", "--delete", "--group", meant)
    assert f"Group '{meant}' could not be deleted" in gone
    assert "GroupIdNotFoundException" in gone


async def test_the_worker_groups_offsets_go_through_orders_commands(
    settings: Settings, engine: AsyncEngine, run_id: str
) -> None:
    bootstrap, group = settings.kafka.bootstrap_servers, settings.worker.group_id
    topic = settings.kafka.orders_topic
    expected = await orders_accepted(settings, customers_for(run_id, 6), per_customer=3)
    async with worker_running(settings, engine):
        assert await wait_until_stored(engine, expected) == 18
    ends = non_empty(await end_offsets(bootstrap, topic))
    lag, described = await asyncio.gather(
        orders(settings, "lag"), ok(bootstrap, "consumer-groups", "--describe", "--group", group)
    )
    assert lag.returncode == 0, lag.stderr
    assert lag.stdout.strip().splitlines()[-1].split() == ["total", "0"]
    assert sum(int(row["LAG"]) for row in table(described) if row["LAG"] != "-") == 0

    # Kafka's reset moves the mirror only: the workers would resume from PostgreSQL.
    reset_in_kafka = ("--reset-offsets", "--group", group, "--topic", topic, "--to-earliest")
    await ok(bootstrap, "consumer-groups", *reset_in_kafka, "--execute")
    assert set((await committed_offsets(settings)).values()) == {0}
    assert non_empty(await stored_positions(engine, group, topic)) == ends

    reset = await orders(settings, "offsets", "reset", "--to-earliest", "--execute")
    assert reset.returncode == 0, reset.stderr
    assert set((await stored_positions(engine, group, topic)).values()) == {0}

    watching = await asyncio.create_subprocess_exec(
        ORDERS,
        "lag",
        "--watch",
        "--interval",
        "0.3",
        env=settings_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(3)
    watching.send_signal(signal.SIGINT)
    async with asyncio.timeout(20):
        shown, _ = await watching.communicate()
    assert watching.returncode == 0
    assert f"group {group}".encode() in shown

    deleted = await orders(settings, "offsets", "delete", "--execute")
    assert deleted.returncode == 0, deleted.stderr
    assert await stored_positions(engine, group, topic) == {}
    listed = await ok(bootstrap, "consumer-groups", "--list")
    assert group not in listed.split()


async def test_a_stopped_broker_fails_the_producer_and_says_so_in_its_log() -> None:
    """Error handling: `confluent local kafka stop`, then produce, then read the broker's log;
    on a broker of the test's own (the shared one must keep running)."""
    with (
        tempfile.TemporaryDirectory(prefix="lab-cli-") as home,
        throwaway_cluster(Path(home) / "kafka", base_port=free_port_pair()) as broker,
    ):
        await ok(broker.bootstrap, "topics", "--create", "--topic", "orders", "--partitions", "1")
        await ok(broker.bootstrap, "console-producer", "--topic", "orders", stdin="before\n")
        assert await end_offsets(broker.bootstrap, "orders") == {0: 1}
        node = Path(home) / "kafka" / "node-1"
        stopped = await asyncio.to_thread(
            subprocess.run, ["sh", "-c", f"kill $(cat {node}/broker.pid)"], check=False
        )
        assert stopped.returncode == 0
        pid_file = node / "broker.pid"
        assert await eventually(lambda: broker.services.pid_alive(pid_file) is None, timeout=30)

        failed = await kafka_cli(
            broker.bootstrap,
            "console-producer",
            *("--topic", "orders", "--max-block-ms", "3000"),
            stdin="test message\n",
        )
        # The tool reports the send that failed, and still exits 0.
        assert "ERROR Error when sending message to topic orders" in failed.stderr
        assert "TimeoutException" in failed.stderr
        assert failed.returncode == 0
        log = (node / "broker.log").read_text()
        assert "Kafka Server started" in log
        assert "[BrokerServer id=1] shutting down" in log
