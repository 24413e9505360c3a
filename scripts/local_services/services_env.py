"""<state>/services.env: what the app needs to reach the services `make up` started.

KEY=VALUE lines (DATABASE_URL, DATABASE_MIGRATION_URL, and whatever another service adds), read
by app/settings.py below the environment and `.env`. It holds passwords, so it is readable by its
owner only, and each service merges its own keys without dropping the others'.
"""

from __future__ import annotations

import os
from pathlib import Path

from .processes import STATE


def services_env_file() -> Path:
    return STATE / "services.env"


def read_services_env(path: Path | None = None) -> dict[str, str]:
    path = path or services_env_file()
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    values = {}
    for line in lines:
        key, separator, value = line.partition("=")
        if separator and not line.lstrip().startswith("#"):
            values[key.strip()] = value.strip()
    return values


def update_services_env(changes: dict[str, str], path: Path | None = None) -> Path:
    """Set `changes` in the file, keep every other key; written whole (0600) and renamed into
    place, so a reader never sees half a file and a password is never world-readable."""
    path = path or services_env_file()
    for key, value in changes.items():
        if "\n" in value or "=" in key:
            raise ValueError(f"{key}: a services.env value must be one line")
    merged = read_services_env(path) | changes
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    scratch.unlink(missing_ok=True)
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write("# Written by `make up` (scripts/services.py); read by the app's settings.\n")
        out.writelines(f"{key}={value}\n" for key, value in merged.items())
    os.replace(scratch, path)
    return path
