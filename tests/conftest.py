"""Shared fixtures.  Integration tests run against a real Kafka broker and redis-server that this test
session starts itself (on free ports, in a temporary state dir), unless PEAKROUTE_KAFKA_BOOTSTRAP /
PEAKROUTE_REDIS_URL point at running servers."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from peakroute.config import Settings

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


@contextlib.contextmanager
def local_stack(state: Path, **overrides: object) -> Iterator[Settings]:
    """A real Kafka + Redis of their own, on free ports, torn down afterwards."""
    from peakroute.stack import LocalStack, free_port
    from peakroute.streams.topics import topic_specs

    base = Settings.from_env()
    if base.kafka_external and base.redis_external:
        LocalStack(base).ensure_topics(topic_specs(base))
        yield base
        return
    values: dict[str, object] = {"state_dir": str(state)}
    if not base.kafka_external:
        kafka_port, controller_port = free_port(), free_port()
        while controller_port == kafka_port:
            controller_port = free_port()
        values["kafka_bootstrap"] = f"127.0.0.1:{kafka_port}"
        values["kafka_controller_port"] = controller_port
    if not base.redis_external:
        values["redis_url"] = f"redis://127.0.0.1:{free_port()}/0"
    values.update(overrides)
    settings = Settings.from_env(**values)
    stack = LocalStack(settings)
    stack.up(topic_specs(settings))
    try:
        yield settings
    finally:
        stack.reset() if os.environ.get("PEAKROUTE_KEEP_TEST_STACK") != "1" else stack.down()


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings pointing at a running real Kafka + Redis shared by this test session."""
    with local_stack(tmp_path_factory.mktemp("stack")) as settings:
        yield settings


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.slow`` tests (long fault scenarios, the soak) run only with PEAKROUTE_SLOW_TESTS=1
    (long forms) or PEAKROUTE_SLOW_TESTS=short (their short forms, e.g. to loop one for a flake)."""
    if os.environ.get("PEAKROUTE_SLOW_TESTS") in ("1", "short"):
        return
    skip = pytest.mark.skip(reason="slow: set PEAKROUTE_SLOW_TESTS=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
