"""Apache Kafka in KRaft combined mode: the broker's jars from Maven Central, one JVM per node.

In PLAINTEXT (the default) or secured (`sasl_ssl`: TLS, SCRAM users, ACLs; see kafka_security).
Each mode keeps its cluster in a folder of its own (`cluster-1`, `cluster-1-sasl_ssl`), so
switching never starts one mode's configuration on the other's storage.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from .kafka_security import (
    SECURITY_MODES,
    AclScope,
    SecuredBroker,
    SecuredLayout,
    prepare_secured,
    write_private,
)
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
# 1 GiB: the test suite and `make lab` create and delete hundreds of topics and run many
# transactional producers against one long-lived broker; with 512 MiB it died of
# OutOfMemoryError after ~90 minutes of that (a developer's day).
KAFKA_HEAP = os.environ.get("KAFKA_HEAP_OPTS", "-Xms256m -Xmx1g")
# Kafka's command-line tools live for seconds: the quick JIT and the serial GC start them with
# about a third less CPU (they run many times at start-up, on machines with few cores).
TOOL_JVM = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


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


def plaintext_listeners(broker_port: int, controller_port: int) -> list[str]:
    return [
        f"listeners=PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{broker_port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    ]


def kafka_properties(
    node: int, brokers: int, base: int, data: Path, secured: SecuredBroker | None = None
) -> str:
    broker_port, controller_port = kafka_ports(node, base)
    voters = ",".join(f"{n}@127.0.0.1:{kafka_ports(n, base)[1]}" for n in range(1, brokers + 1))
    replication = min(brokers, 3)
    min_isr = 2 if brokers >= 3 else 1
    listeners = (
        secured.listener_properties(broker_port, controller_port)
        if secured
        else plaintext_listeners(broker_port, controller_port)
    )
    return "\n".join(
        [
            "process.roles=broker,controller",
            f"node.id={node}",
            f"controller.quorum.voters={voters}",
            *listeners,
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


def kafka_cluster(brokers: int, security: str) -> Path:
    """Where `make up` keeps a cluster of this size and security mode."""
    suffix = "" if security == "plaintext" else f"-{security}"
    return STATE / "kafka" / f"cluster-{brokers}{suffix}"


def kafka_up(
    brokers: int,
    base: int,
    cluster: Path | None = None,
    security: str = "plaintext",
    acl_scope: AclScope | None = None,
) -> str:
    """Start (or find running) a KRaft cluster of `brokers` combined nodes; wait until ready.

    Secured (`security="sasl_ssl"`), the TLS material and the credentials live beside the
    cluster's folder (`tls/`, `credentials/`; see kafka_security), and the ACLs are granted on
    `acl_scope` (default: the settings' names from the environment).
    """
    if security not in SECURITY_MODES:
        raise ServiceError(
            f"KAFKA_SECURITY={security}: expected one of {', '.join(SECURITY_MODES)}"
        )
    cluster = cluster or kafka_cluster(brokers, security)
    bootstrap = ",".join(f"127.0.0.1:{kafka_ports(n, base)[0]}" for n in range(1, brokers + 1))
    java_bin = java()
    classpath = kafka_classpath()
    _hold_to_mode(cluster, security)
    for node in range(1, brokers + 1):
        if not pid_alive(kafka_node_home(cluster, node) / "broker.pid"):
            for port, owner in zip(kafka_ports(node, base), ("node", "controller"), strict=True):
                if reachable("127.0.0.1", port):
                    _name_the_other_cluster(cluster, port)
                require_port_free(port, f"Kafka {owner} {node}")
    secured = None
    if security == "sasl_ssl":
        formatted = (kafka_node_home(cluster, 1) / "data" / "meta.properties").exists()
        secured = prepare_secured(SecuredLayout(cluster.parent), formatted)
        # Before formatting: new passwords must be on disk before they are in the metadata.
        secured.write_credentials(bootstrap)
    command_config = secured.layout.admin_properties if secured else None
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
        broker_port, _ = kafka_ports(node, base)
        home.mkdir(parents=True, exist_ok=True)
        config = home / "server.properties"
        # Secured, it holds the keystore's and the inter-broker user's passwords.
        write_private(config, kafka_properties(node, brokers, base, data, secured))
        if not (data / "meta.properties").exists():
            say(f"formatting storage of Kafka node {node}")
            arguments = storage_format_arguments(cluster_id, config, secured)
            if not format_storage([java_bin, *TOOL_JVM, "-cp", classpath], arguments, home):
                raise ServiceError(f"formatting the storage of Kafka node {node} failed")
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
            functools.partial(kafka_answers, java_bin, classpath, broker_port, command_config),
            f"Kafka node {node}",
            120,
            log,
        )
    if secured:
        secured.apply_acls(
            cluster,
            bootstrap,
            [java_bin, *TOOL_JVM, "-cp", classpath],
            acl_scope or AclScope.from_environment(),
        )
        say(f"Kafka ready at {bootstrap} (SASL_SSL, SCRAM-SHA-512, ACLs)")
        say(f"credentials: {secured.layout.credentials}/<principal>.env (set -a; . that file)")
    else:
        say(f"Kafka ready at {bootstrap}")
    return bootstrap


def storage_format_arguments(
    cluster_id: str, config: Path, secured: SecuredBroker | None
) -> list[str]:
    """StorageTool's `format` options; secured, they carry every SCRAM user's password."""
    return [
        "-t",
        cluster_id,
        "-c",
        str(config),
        "--ignore-formatted",
        *(secured.format_arguments() if secured else []),
    ]


def format_storage(java: list[str], arguments: list[str], folder: Path) -> bool:
    """Run `kafka.tools.StorageTool format` with `java` (the JVM and its class path); True when
    it succeeded.

    The arguments (passwords among them) never appear on a command line, where `ps` would show
    them to every user of the machine: they go to an argument file only its owner may read, in
    `folder`, which the tool reads itself (`@FILE`, one argument per line: Kafka's argparse4j
    expands it; the `java` launcher does not, after the main class), deleted once it has run.
    """
    if any("\n" in argument for argument in arguments):
        raise ServiceError("a StorageTool argument cannot hold a line break")
    argfile = folder / "format.args"
    write_private(argfile, "".join(f"{argument}\n" for argument in arguments))
    try:
        formatting = subprocess.run(
            [*java, "kafka.tools.StorageTool", "format", f"@{argfile}"],
            check=False,
            # It prints the bootstrap metadata, the SCRAM users' salted keys included.
            stdout=subprocess.DEVNULL,
        )
    finally:
        argfile.unlink(missing_ok=True)
    # Not CalledProcessError: never a message that could carry the arguments.
    return formatting.returncode == 0


def cluster_mode(cluster: Path) -> str:
    """The security mode a cluster's folder was created for (older folders: plaintext)."""
    stamp = cluster / "security"
    return stamp.read_text().strip() if stamp.exists() else "plaintext"


@dataclass(frozen=True)
class LocalCluster:
    """One of our own clusters (a folder under `<state>/kafka`) with a node running."""

    folder: Path
    mode: str  # its security mode (cluster_mode)
    ports: frozenset[int]  # what its running nodes listen on, brokers' and controllers'


def running_clusters(root: Path | None = None) -> list[LocalCluster]:
    """The clusters under `root` (default `<state>/kafka`) with a node alive, each with its
    recorded security mode and the ports of its running nodes (their server.properties)."""
    ports: dict[Path, set[int]] = {}
    for pid_file in sorted((root or STATE / "kafka").glob("*/node-*/broker.pid")):
        if pid_alive(pid_file):
            node = pid_file.parent
            ports.setdefault(node.parent, set()).update(_listener_ports(node / "server.properties"))
    return [
        LocalCluster(folder, cluster_mode(folder), frozenset(found))
        for folder, found in ports.items()
    ]


def _listener_ports(properties: Path) -> set[int]:
    try:
        lines = properties.read_text().splitlines()
    except OSError:
        return set()
    for line in lines:
        if line.startswith("listeners="):
            return {int(port) for port in re.findall(r":(\d+)(?=,|$)", line.strip())}
    return set()


def bootstrap_target(bootstrap: str | None) -> tuple[str, int]:
    """Host and port of the first server of KAFKA_BOOTSTRAP_SERVERS (unset: the default)."""
    first = (bootstrap or DEFAULT_BOOTSTRAP).split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def local_cluster_at(host: str, port: int, root: Path | None = None) -> LocalCluster | None:
    """Our own running cluster that serves host:port, if any (ours listen on loopback only)."""
    if host not in LOOPBACK:
        return None
    return next((cluster for cluster in running_clusters(root) if port in cluster.ports), None)


def requested_security(value: str | None) -> str | None:
    """KAFKA_SECURITY as asked (None: not asked), checked against the modes there are."""
    mode = (value or "").strip().lower()
    if mode and mode not in SECURITY_MODES:
        raise ServiceError(f"KAFKA_SECURITY={value}: expected one of {', '.join(SECURITY_MODES)}")
    return mode or None


def settle_security(requested: str | None, running: LocalCluster | None, port: int) -> str:
    """The security mode to use against `port`: that of our own cluster running there, else the
    one requested (KAFKA_SECURITY), else plaintext.

    Asking for the other mode than the running cluster's fails: it would otherwise pass
    silently, with clients that have no credentials (or credentials and no TLS)."""
    if running is None:
        return requested or "plaintext"
    if requested is None or requested == running.mode:
        return running.mode
    raise ServiceError(
        f"the {running.mode} Kafka cluster runs on port {port} ({running.folder}), but "
        f"KAFKA_SECURITY={requested} asks for a {requested} one: stop it first (make down), "
        f"then start again; or unset KAFKA_SECURITY to use the {running.mode} one"
    )


def _hold_to_mode(cluster: Path, security: str) -> None:
    """A cluster's folder serves the security mode it was created for, and no other."""
    if cluster.exists() and any(cluster.iterdir()) and cluster_mode(cluster) != security:
        raise ServiceError(
            f"{cluster} holds a {cluster_mode(cluster)} cluster, not {security}: use another folder"
        )
    cluster.mkdir(parents=True, exist_ok=True)
    (cluster / "security").write_text(security)


def _name_the_other_cluster(cluster: Path, port: int) -> None:
    """A port taken by our own cluster of another mode: say which, and how to switch."""
    for pid_file in sorted(cluster.parent.glob("*/node-*/broker.pid")):
        other = pid_file.parent.parent
        if other != cluster and pid_alive(pid_file):
            raise ServiceError(
                f"port {port} is taken by the {cluster_mode(other)} Kafka cluster in {other}; "
                "stop it first (make down), then start this one"
            )


def kafka_answers(
    java_bin: str, classpath: str, port: int, command_config: Path | None = None
) -> bool:
    """True once the broker answers a metadata request (kafka-topics --list does one);
    `command_config` is the client config of a secured broker's super user."""
    if not reachable("127.0.0.1", port):
        return False
    result = subprocess.run(
        [
            java_bin,
            *TOOL_JVM,
            "-cp",
            classpath,
            "org.apache.kafka.tools.TopicCommand",
            "--bootstrap-server",
            f"127.0.0.1:{port}",
            *(["--command-config", str(command_config)] if command_config else []),
            "--list",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return result.returncode == 0


def kafka_down(root: Path | None = None) -> None:
    """Stop every node under `root`: the state's clusters (<root>/<cluster>/node-N), or one
    cluster's own folder (<root>/node-N). Not a recursive glob: it would walk the data folders
    of a broker that is deleting segments, and trip over files vanishing under it."""
    root = root or STATE / "kafka"
    pid_files = [*root.glob("node-*/broker.pid"), *root.glob("*/node-*/broker.pid")]
    for pid_file in sorted(pid_files):
        stop_pid(pid_file, f"Kafka {pid_file.parent.parent.name}/{pid_file.parent.name}")
