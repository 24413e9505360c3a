"""`make up`'s credentials file: merged, never clobbered, private, and read back by the app."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from local_services.postgres import RolePasswords, database_urls, kept_passwords
from local_services.services_env import read_services_env, update_services_env


def test_a_service_merges_its_keys_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "state" / "services.env"
    update_services_env({"KAFKA_SASL_PASSWORD": "k1", "DATABASE_URL": "old"}, path)
    update_services_env({"DATABASE_URL": "new", "DATABASE_MIGRATION_URL": "owner"}, path)
    expected = {
        "KAFKA_SASL_PASSWORD": "k1",
        "DATABASE_URL": "new",
        "DATABASE_MIGRATION_URL": "owner",
    }
    assert read_services_env(path) == expected
    # The app reads it with python-dotenv (pydantic-settings): the same values.
    assert dotenv_values(path) == expected


def test_the_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = update_services_env({"DATABASE_URL": "x"}, tmp_path / "services.env")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["services.env"]  # no scratch file left


def test_a_value_of_more_than_one_line_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one line"):
        update_services_env({"DATABASE_URL": "a\nEVIL=1"}, tmp_path / "services.env")
    assert not (tmp_path / "services.env").exists()


def test_make_up_keeps_the_passwords_it_wrote_before(tmp_path: Path) -> None:
    first = RolePasswords.generate()
    urls = database_urls(5432, first)
    path = update_services_env(
        {"DATABASE_URL": urls.app, "DATABASE_MIGRATION_URL": urls.owner}, tmp_path / "s.env"
    )
    assert kept_passwords(read_services_env(path)) == first


def test_without_earlier_urls_the_passwords_are_new_random_and_distinct() -> None:
    made = [kept_passwords({}) for _ in range(3)]
    secrets = [password for pair in made for password in (pair.owner, pair.app)]
    assert len(set(secrets)) == len(secrets)
    assert all(len(password) >= 32 for password in secrets)
    # URLs naming other roles (someone's own server) are not taken for ours.
    foreign = {"DATABASE_URL": "postgresql://me:mine@h/db", "DATABASE_MIGRATION_URL": "x"}
    assert kept_passwords(foreign).app != "mine"
