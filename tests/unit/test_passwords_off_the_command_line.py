"""No password on a command line, where `ps` shows it to every user of the machine.

What starts a secured broker hands its passwords over in private files or the environment:
StorageTool's SCRAM users (`make up`: scripts/local_services/kafka.py; compose:
scripts/kafka/broker.sh) through an argument file, keytool's store password (scripts/kafka/tls.sh)
through a variable. Each program here is a stand-in (or a wrapper of the real keytool) that
records the command line it was given. tests/integration/test_kafka_security.py checks the same
of every java and keytool run of a real `KAFKA_SECURITY=sasl_ssl` start.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from local_services.kafka import format_storage, storage_format_arguments
from local_services.kafka_security import PRINCIPALS, SecuredBroker, SecuredLayout

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SCRIPTS = ROOT / "scripts" / "kafka"

# A stand-in for a program given `@FILE`: records its arguments, and the file's lines and mode.
RECORDER = """#!/usr/bin/env bash
printf '%s\\n' "$@" >>"$RECORD/argv"
for argument in "$@"; do
    if [[ $argument == @* ]]; then
        cp "${argument#@}" "$RECORD/argfile"
        stat -c %a "${argument#@}" >"$RECORD/argfile.mode"
    fi
done
"""


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_make_up_formats_the_storage_with_the_passwords_in_a_private_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passwords = {principal: f"pw-of-{principal}-0123456789" for principal in PRINCIPALS}
    secured = SecuredBroker(SecuredLayout(tmp_path), passwords)
    arguments = storage_format_arguments("cluster-id", tmp_path / "server.properties", secured)
    assert all(any(pw in argument for argument in arguments) for pw in passwords.values())

    monkeypatch.setenv("RECORD", str(tmp_path))
    java = executable(tmp_path / "bin" / "java", RECORDER)
    node = tmp_path / "node-1"
    assert format_storage([str(java), "-cp", "libs/*"], arguments, node)

    argv = (tmp_path / "argv").read_text()
    assert "kafka.tools.StorageTool\nformat\n@" in argv
    for password in passwords.values():
        assert password not in argv
    assert (tmp_path / "argfile").read_text().splitlines() == arguments
    assert (tmp_path / "argfile.mode").read_text().strip() == "600"
    assert list(node.iterdir()) == [], "the argument file is deleted once the tool has run"


def test_compose_formats_the_storage_with_the_passwords_in_a_private_file(
    tmp_path: Path,
) -> None:
    """scripts/kafka/broker.sh, with stand-ins for the image's kafka-storage.sh and
    kafka-server-start.sh (BROKER_DIST) and a fake keystore (BROKER_TLS)."""
    dist, tls, config = tmp_path / "dist", tmp_path / "tls", tmp_path / "config"
    executable(dist / "bin" / "kafka-storage.sh", RECORDER)
    executable(dist / "bin" / "kafka-server-start.sh", "#!/usr/bin/env bash\n")
    tls.mkdir()
    (tls / "broker.p12").write_text("not a keystore")
    (tls / "store.password").write_text("store-password-0123456789")
    users = {
        "SCRAM_ADMIN_PASSWORD": "admin-password-0123456789",
        "SCRAM_API_PASSWORD": "api-password-0123456789",
        "SCRAM_WORKER_PASSWORD": "worker-password-0123456789",
        "SCRAM_ANALYTICS_PASSWORD": "analytics-password-0123456789",
        "SCRAM_PAYMENTS_PASSWORD": "payments-password-0123456789",
        "SCRAM_OPERATOR_PASSWORD": "operator-password-0123456789",
    }
    environment = {
        "PATH": os.environ["PATH"],
        "RECORD": str(tmp_path),
        "CLUSTER_ID": "KNX3C_ktTduxk0eSZgUWlw",
        "BROKER_DIST": str(dist),
        "BROKER_TLS": str(tls),
        "BROKER_CONFIG": str(config),
        "KAFKA_NODE_ID": "1",
        **users,
    }
    subprocess.run(["bash", str(KAFKA_SCRIPTS / "broker.sh")], env=environment, check=True)

    argv = (tmp_path / "argv").read_text()
    assert argv.startswith("format\n@")
    for password in users.values():
        assert password not in argv
    formatted = (tmp_path / "argfile").read_text().splitlines()
    assert "SCRAM-SHA-512=[name=orders-api,password=api-password-0123456789]" in formatted
    assert sum(line.startswith("SCRAM-SHA-512=[name=") for line in formatted) == len(users)
    assert formatted[formatted.index("--config") + 1] == str(config / "server.properties")
    assert (tmp_path / "argfile.mode").read_text().strip() == "600"
    assert sorted(path.name for path in config.iterdir()) == [
        "admin.properties",
        "server.properties",
    ], "the argument file is deleted once the tool has run"


def test_the_certificates_are_issued_with_the_store_password_off_keytools_command_line(
    tmp_path: Path,
) -> None:
    """The real keytool, behind a wrapper that records its arguments."""
    real = subprocess.run(
        ["bash", "-c", "command -v keytool"], capture_output=True, text=True, check=True
    ).stdout.strip()
    bin_dir = tmp_path / "bin"
    executable(
        bin_dir / "keytool",
        f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >>"$RECORD/argv"\nexec {real} "$@"\n',
    )
    out = tmp_path / "tls"
    environment = {**os.environ, "RECORD": str(tmp_path), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    subprocess.run(
        ["bash", str(KAFKA_SCRIPTS / "tls.sh"), str(out), "127.0.0.1", "localhost"],
        env=environment,
        check=True,
        capture_output=True,
    )
    password = (out / "store.password").read_text()
    runs = (tmp_path / "argv").read_text().splitlines()
    assert len(runs) >= 5, runs
    assert all("-storepass:env" in run for run in runs)
    assert not [run for run in runs if password in run]
    assert stat.S_IMODE((out / "broker.p12").stat().st_mode) == 0o600
