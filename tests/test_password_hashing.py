"""Password and PIN hashing cost: strong by default, lowered only where it is configured
(the test suite), and a stored hash always verifies at the cost it was made with."""

from __future__ import annotations

from pathlib import Path

import pytest
from argon2 import profiles
from flask import Flask

from mes.config import ConfigError, load_config
from mes.users import secrets
from tests.conftest import TEST_ARGON2, base_config

PRODUCTION = profiles.RFC_9106_LOW_MEMORY  # 3 passes over 64 MiB in 4 lanes


def _app(tmp_path: Path, env: dict[str, str]) -> Flask:
    app = Flask("hashing-test")
    app.config.update(load_config({"MES_HOME": str(tmp_path), **env}, overrides={"SECRET_KEY": "k"}))
    return app


def _prefix(time_cost: int, memory_kib: int, parallelism: int) -> str:
    return f"$argon2id$v=19$m={memory_kib},t={time_cost},p={parallelism}$"


def test_production_defaults_are_the_strong_ones(tmp_path: Path) -> None:
    config = load_config({"MES_HOME": str(tmp_path)}, overrides={"SECRET_KEY": "k"})
    assert (config["MES_ARGON2_TIME_COST"], config["MES_ARGON2_MEMORY_KIB"], config["MES_ARGON2_PARALLELISM"]) \
        == (PRODUCTION.time_cost, PRODUCTION.memory_cost, PRODUCTION.parallelism) == (3, 65536, 4)
    with _app(tmp_path, {}).app_context():
        stored = secrets.hash_secret("Corr3ct-Horse-Battery")
    assert stored.startswith(_prefix(3, 65536, 4)), stored
    # outside any app (scripts, the verifier) it is the production cost as well
    assert secrets.hash_secret("2468").startswith(_prefix(3, 65536, 4))


def test_the_configured_cost_makes_new_hashes_and_old_hashes_still_verify(tmp_path: Path) -> None:
    strong = secrets.hash_secret("Corr3ct-Horse-Battery")
    cheap = _app(tmp_path, {"MES_ARGON2_TIME_COST": "1", "MES_ARGON2_MEMORY_KIB": "8", "MES_ARGON2_PARALLELISM": "1"})
    with cheap.app_context():
        weak = secrets.hash_secret("Corr3ct-Horse-Battery")
        assert weak.startswith(_prefix(1, 8, 1)), weak
        assert secrets.verify_secret(strong, "Corr3ct-Horse-Battery")  # the hash carries its own cost
        assert not secrets.verify_secret(strong, "corr3ct-horse-battery")
        assert not secrets.verify_secret(None, "Corr3ct-Horse-Battery")  # no account: False, at this cost
    assert secrets.verify_secret(weak, "Corr3ct-Horse-Battery")


@pytest.mark.parametrize(("env", "names"), [
    ({"MES_ARGON2_TIME_COST": "0"}, "MES_ARGON2_TIME_COST"),
    ({"MES_ARGON2_PARALLELISM": "two"}, "MES_ARGON2_PARALLELISM"),
    ({"MES_ARGON2_MEMORY_KIB": "16"}, "MES_ARGON2_MEMORY_KIB"),  # < 8 KiB for each of the 4 default lanes
])
def test_an_impossible_cost_names_the_variable(tmp_path: Path, env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        load_config({"MES_HOME": str(tmp_path), **env}, overrides={"SECRET_KEY": "k"})


def test_the_suite_hashes_at_argon2s_cheapest_cost(tmp_path: Path) -> None:
    cheapest = profiles.CHEAPEST
    assert TEST_ARGON2 == {"MES_ARGON2_TIME_COST": cheapest.time_cost, "MES_ARGON2_MEMORY_KIB": cheapest.memory_cost,
                           "MES_ARGON2_PARALLELISM": cheapest.parallelism}
    config = base_config(tmp_path, "sqlite://")
    assert {k: config[k] for k in TEST_ARGON2} == TEST_ARGON2
