"""One short fault run of `make chaos` end to end (loadtests/chaos.py): the shadow's model server is SIGKILLed
under load and restarted; the counts it reports must add up. No timing assertions: the machine is shared."""

from __future__ import annotations

import pytest

from loadtests import chaos

pytestmark = pytest.mark.integration


def test_shadow_killed_run_counts_are_consistent(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(chaos, "CHAOS_DIR", tmp_path / "chaos")
    result = chaos.run_shadow_killed(run_s=8.0)

    assert result.not_run is None
    assert result.sent > 0
    assert 0 <= result.errors <= result.sent
    assert sum(result.errors_per_s) == result.errors  # every failure is in the timeline, once
    assert result.fault_at_s is not None and result.restored_at_s is not None
    assert 0 < result.fault_at_s < result.restored_at_s
    assert result.recovered is not None
    assert (result.time_to_recover_s is not None) == result.recovered
    assert result.lost is None  # nothing acknowledged-then-lost applies to a synchronous HTTP run
    assert any(note.startswith("Mirrors:") for note in result.notes)
    assert result.met == (result.errors == 0 and result.recovered)

    report = chaos.build_report([result], None, {"date": "test"})
    assert f"| shadow-killed | shadow | {result.fault} | {result.sent} | {result.errors} (" in report
