"""Secrets come from the environment only and are never shown; dependencies are pinned and locked."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
from packaging.version import Version

from peakroute.cli import main
from peakroute.config import Settings, mask_url

ROOT = Path(__file__).resolve().parents[2]
SECRET_ENV = {
    "PEAKROUTE_OPERATOR_TOKEN": "op-token-8c1f0e",
    "PEAKROUTE_WEBHOOK_SECRET_TMALL": "tm-secret-77aa",
    "PEAKROUTE_WEBHOOK_SECRET_DOUYIN": "dy-secret-91bb",
    "PEAKROUTE_REDIS_URL": "redis://default:redis-pw-3d2e@10.1.2.3:6379/0",
    "PEAKROUTE_API_URL": "https://ops:api-pw-5f6a@ops.example:8443",
}
SECRET_VALUES = ["op-token-8c1f0e", "tm-secret-77aa", "dy-secret-91bb", "redis-pw-3d2e", "api-pw-5f6a"]


def test_repr_str_and_describe_never_show_a_secret() -> None:
    s = Settings.from_env(SECRET_ENV)
    assert s.operator_token and s.webhook_secrets["tmall"] and "redis-pw-3d2e" in s.redis_url  # really read
    for shown in (repr(s), str(s), f"{s!r}", repr(s.describe()), repr([s])):
        for secret in SECRET_VALUES:
            assert secret not in shown
    assert "redis://default:***@10.1.2.3:6379/0" in repr(s)
    assert "webhook_secrets={'tmall': '***', 'douyin': '***'}" in repr(s)


def test_peakroute_config_masks_secrets(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for k in list(os.environ):
        if k.startswith("PEAKROUTE_"):
            monkeypatch.delenv(k)
    for k, v in SECRET_ENV.items():
        monkeypatch.setenv(k, v)
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    for secret in SECRET_VALUES:
        assert secret not in out
    assert "PEAKROUTE_OPERATOR_TOKEN=(set)" in out and "PEAKROUTE_WEBHOOK_SECRET_TMALL=(set)" in out
    assert "PEAKROUTE_WEBHOOK_SECRET_JD=(unset: webhooks refused)" in out
    assert "PEAKROUTE_REDIS_URL=redis://default:***@10.1.2.3:6379/0" in out
    assert "PEAKROUTE_KAFKA_BOOTSTRAP=" in out  # ordinary settings still shown


@pytest.mark.parametrize("url,shown", [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
    ("rediss://user:p%40ss@h/1", "rediss://user:***@h/1"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("https://tok@h", "https://tok:***@h"),
])
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_status_printer_masks_urls(capsys: pytest.CaptureFixture[str]) -> None:
    from peakroute.cli import _print_status

    _print_status({"redis": {"state": "external", "url": "redis://:pw-9@h:1/0", "pid": None}})
    out = capsys.readouterr().out
    assert "pw-9" not in out and "redis://:***@h:1/0" in out


def test_compose_takes_every_secret_from_the_environment() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for line in text.splitlines():
        m = re.match(r"\s*([A-Z_]*(?:SECRET|TOKEN|PASSWORD)[A-Z_]*)\s*:\s*(\S+)", line)
        if m:
            assert m.group(2).startswith("${"), f"hardcoded secret in docker-compose.yml: {line.strip()}"
    assert "DEMO-ONLY" in text


def test_compose_workers_keep_their_table_files_on_volumes_of_their_own() -> None:
    """The image's state dir is writable by its unprivileged user, and each worker has a volume of
    its own there: a clean stop's table files (tables/clean_stop.py) survive a recreated container,
    and two workers — both pid 1 in their containers — never share per-process directories."""
    docker = (ROOT / "Dockerfile").read_text()
    state = re.search(r"ENV PEAKROUTE_STATE_DIR=(\S+)", docker)
    assert state and f"chown nobody:nogroup {state.group(1)}" in docker and "USER nobody" in docker
    compose = (ROOT / "docker-compose.yml").read_text()
    mounts = re.findall(r'volumes: \["(worker-\d+-state):(\S+)"\]', compose)
    workers = re.findall(r"^  (worker-\d+):$", compose, re.M)
    assert len(mounts) == len(workers) == 2 and len({v for v, _ in mounts}) == len(workers)
    assert all(path == state.group(1) for _, path in mounts)
    assert all(f"  {volume}:" in compose.split("\nvolumes:")[-1] for volume, _ in mounts)


# --------------------------------------------------------------------------- dependencies


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"requirements.lock: {line!r} is not pinned exactly"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_direct_dependencies_are_pinned_and_agree_with_the_lock() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = _lock()
    for req in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        name, sep, version = req.partition("==")
        assert sep, f"pyproject.toml: {req!r} is not pinned"
        key = re.sub(r"[-_.]+", "-", name.split("[")[0]).lower()
        assert lock.get(key) == version, f"{key}: pyproject {version}, requirements.lock {lock.get(key)} (make lock)"
    assert Version(lock["faust-streaming"]) >= Version("0.15.2")  # 0.13.1-0.15.1 hang on rebalance


def test_installs_use_the_lock() -> None:
    assert "-c $(LOCK)" in (ROOT / "Makefile").read_text()
    assert "-c requirements.lock" in (ROOT / "Dockerfile").read_text()


def test_short_secrets_are_named_never_shown() -> None:
    from peakroute.api import weak_secrets

    s = Settings.from_env({"PEAKROUTE_WEBHOOK_SECRET_JD": "short1", "PEAKROUTE_WEBHOOK_SECRET_TMALL": "x" * 32,
                           "PEAKROUTE_OPERATOR_TOKEN": "tok"})
    assert weak_secrets(s) == ["PEAKROUTE_WEBHOOK_SECRET_JD", "PEAKROUTE_OPERATOR_TOKEN"]
    assert weak_secrets(Settings.from_env({})) == []
