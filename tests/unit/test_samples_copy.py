"""The project's copy of the shared channel samples (used by the demo and when ../shared is absent)
must stay identical to the contract's originals."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "channel-samples"
COPY = ROOT / "peakroute" / "data" / "samples"


@pytest.mark.parametrize("channel", ["tmall", "jd", "douyin", "wxmini"])
def test_copy_matches_shared(channel: str) -> None:
    if not SHARED.is_dir():
        pytest.skip("../shared/channel-samples not present")
    assert (COPY / f"{channel}.json").read_bytes() == (SHARED / f"{channel}.json").read_bytes()
