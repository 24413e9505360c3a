"""Apache Kafka in KRaft combined mode: the broker's jars from Maven Central, one JVM per node."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from .processes import (
    ROOT,
    STATE,
    ServiceError,
    adopt,
    pid_alive,
    reachable,
    require_port_free,
    say,
    stop_pid,
    wait_until,
)

KAFKA_POM = ROOT / "scripts" / "kafka" / "pom.xml"
KAFKA_LOG4J = ROOT / "scripts" / "kafka" / "log4j2.properties"
KAFKA_HEAP = os.environ.get("KAFKA_HEAP_OPTS", "-Xms256m -Xmx512m")


def java() -> str:
    found = shutil.which("java")
    if not found:
        raise ServiceError(
            "Java is missing: the Kafka broker needs Java 17+ (make deps installs it)"
        )
    return found


def kafka_classpath() -> str:
    """The broker's jars, resolved from Maven Central once and cached by the pom's hash."""
    libs = STATE / "kafka" / "libs"
    stamp = STATE / "kafka" / "libs.sha256"
    wanted = hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()
    if not (stamp.exists() and stamp.read_text() == wanted and any(libs.glob("kafka_*.jar"))):
        mvn = shutil.which("mvn")
        if not mvn:
            raise ServiceError(
                "Maven is missing: it fetches the Kafka jars (apt-get install maven)"
            )
        say("resolving the Kafka broker jars from Maven Central (once)")
        shutil.rmtree(libs, ignore_errors=True)
        resolved = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(KAFKA_POM),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={libs}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if resolved.returncode != 0:
            raise ServiceError(f"Maven could not fetch the Kafka jars:\n{resolved.stdout}")
        stamp.write_text(wanted)
    return f"{libs}/*"


def kafka_ports(node: int, base: int) -> tuple[int, int]:
    """Broker and controller port of node 1..n: 9092/9093, 9094/9095, 9096/9097."""
    broker = base + 2 * (node - 1)
    return broker, broker + 1


def kafka_properties(node: int, brokers: int, base: int, data: Path) -> str:
    broker_port, controller_port = kafka_ports(node, base)
    voters = ",".join(f"{n}@127.0.0.1:{kafka_ports(n, base)[1]}" for n in range(1, brokers + 1))
    replication = min(brokers, 3)
    min_isr = 2 if brokers >= 3 else 1
    return "\n".join(
        [
            "process.roles=broker,controller",
            f"node.id={node}",
            f"controller.quorum.voters={voters}",
            f"listeners=PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{broker_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={data}",
            # The project creates its own topics (app/topics.py); a typo must not invent a topic.
            "auto.create.topics.enable=false",
            "unclean.leader.election.enable=false",
            f"offsets.topic.replication.factor={replication}",
            f"transaction.state.log.replication.factor={replication}",
            f"transaction.state.log.min.isr={min_isr}",
            f"default.replication.factor={replication}",
            f"min.insync.replicas={min_isr}",
            # Local runs: no 3 s wait before the first rebalance; fewer threads on a 2-core machine.
            "group.initial.rebalance.delay.ms=0",
            "num.network.threads=2",
            "num.io.threads=4",
            "",
        ]
    )


def kafka_node_home(cluster: Path, node: int) -> Path:
    return cluster / f"node-{node}"


def kafka_up(brokers: int, base: int, cluster: Path | None = None) -> str:
    """Start (or find running) a KRaft cluster of `brokers` combined nodes; wait until ready."""
    cluster = cluster or STATE / "kafka" / f"cluster-{brokers}"
    bootstrap = ",".join(f"127.0.0.1:{kafka_ports(n, base)[0]}" for n in range(1, brokers + 1))
    java_bin = java()
    classpath = kafka_classpath()
    cluster_file = cluster / "cluster.id"
    if not cluster_file.exists():
        cluster_file.parent.mkdir(parents=True, exist_ok=True)
        cluster_file.write_text(uuid.uuid4().hex[:22])
    cluster_id = cluster_file.read_text().strip()
    for node in range(1, brokers + 1):
        home = kafka_node_home(cluster, node)
        data = home / "data"
        pid_file = home / "broker.pid"
        if pid_alive(pid_file):
            continue
        broker_port, controller_port = kafka_ports(node, base)
        require_port_free(broker_port, f"Kafka node {node}")
        require_port_free(controller_port, f"Kafka controller {node}")
        home.mkdir(parents=True, exist_ok=True)
        config = home / "server.properties"
        config.write_text(kafka_properties(node, brokers, base, data))
        if not (data / "meta.properties").exists():
            say(f"formatting storage of Kafka node {node}")
            subprocess.run(
                [
                    java_bin,
                    "-cp",
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(config),
                    "--ignore-formatted",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        log = home / "broker.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [
                    java_bin,
                    *KAFKA_HEAP.split(),
                    "-XX:+UseG1GC",
                    f"-Dlog4j2.configurationFile={KAFKA_LOG4J}",
                    "-cp",
                    classpath,
                    "kafka.Kafka",
                    str(config),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        pid_file.write_text(str(process.pid))
        adopt(process)
        say(f"Kafka node {node} starting on 127.0.0.1:{broker_port} (log: {log})")
    for node in range(1, brokers + 1):
        broker_port, _ = kafka_ports(node, base)
        log = kafka_node_home(cluster, node) / "broker.log"
        wait_until(
            lambda p=broker_port: kafka_answers(java_bin, classpath, p),
            f"Kafka node {node}",
            120,
            log,
        )
    say(f"Kafka ready at {bootstrap}")
    return bootstrap


def kafka_answers(java_bin: str, classpath: str, port: int) -> bool:
    """True once the broker answers a metadata request (kafka-topics --list does one)."""
    if not reachable("127.0.0.1", port):
        return False
    result = subprocess.run(
        [
            java_bin,
            "-cp",
            classpath,
            "org.apache.kafka.tools.TopicCommand",
            "--bootstrap-server",
            f"127.0.0.1:{port}",
            "--list",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return result.returncode == 0


def kafka_down(root: Path | None = None) -> None:
    for pid_file in sorted((root or STATE / "kafka").glob("**/node-*/broker.pid")):
        stop_pid(pid_file, f"Kafka {pid_file.parent.parent.name}/{pid_file.parent.name}")
