"""The short fault campaign (`python -m bench.faults --short`; `scripts/dev.sh faults` runs it at length): the
database killed during concurrent writes, artifact files damaged, the artifacts disk full."""

from __future__ import annotations

import pytest

from bench import faults


def test_the_short_fault_campaign_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert faults.main(["--short"]) == 0, capsys.readouterr().out
