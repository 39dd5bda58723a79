"""The settings object and the CLI surface (no servers)."""

from __future__ import annotations

import pytest

from peakroute.cli import build_parser
from peakroute.config import Settings


def test_settings_read_prefixed_env() -> None:
    s = Settings.from_env({"PEAKROUTE_KAFKA_BOOTSTRAP": "h:1", "PEAKROUTE_PARTITIONS": "12",
                           "PEAKROUTE_WEBHOOK_SECRET_JD": "x", "PEAKROUTE_BATCH_WAIT_MS": "25"})
    assert s.kafka_bootstrap == "h:1" and s.partitions == 12 and s.kafka_external and not s.redis_external
    assert s.batch_wait_ms == 25.0
    assert s.webhook_secrets == {"jd": "x"}


def test_settings_never_show_secrets() -> None:
    s = Settings.from_env({"PEAKROUTE_WEBHOOK_SECRET_TMALL": "topsecret"})
    assert "topsecret" not in repr(s.describe())


@pytest.mark.parametrize("cmd", [[], ["stack"], ["worker"], ["api"], ["normalize"], ["replay"], ["simulate"],
                                 ["demo"], ["config"], ["stock"], ["breaker"], ["review"], ["reconcile"], ["audit"]])
def test_every_command_has_help(cmd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*cmd, "--help"])
    assert exc.value.code == 0
    assert "usage: peakroute" in capsys.readouterr().out


def test_settings_repr_hides_secrets() -> None:
    assert "topsecret" not in repr(Settings.from_env({"PEAKROUTE_WEBHOOK_SECRET_TMALL": "topsecret"}))
