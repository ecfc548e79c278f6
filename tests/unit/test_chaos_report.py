"""The reliability report builder (loadtests/chaos.py) on recorded numbers: goals judged as the issue states them."""

from __future__ import annotations

from loadtests.chaos import VARIANT_DIES, ZERO, RunResult, SoakResult, build_report, errors_per_second, plot


def run(name: str, budget: float, sent: int, errors: int, **kw) -> RunResult:
    return RunResult(name, "p", "f", "goal", budget, sent=sent, errors=errors, **kw)


def test_goals_met_and_not_met() -> None:
    assert run("a", ZERO, 600, 0, recovered=True).met is True
    assert run("a", ZERO, 600, 1, recovered=True).met is False  # 0 errors means 0
    assert run("b", VARIANT_DIES, 2000, 2, recovered=True).met is True  # 0.1% of 2000
    assert run("b", VARIANT_DIES, 2000, 3, recovered=True).met is False
    assert run("c", ZERO, 500, 0, lost=1, acknowledged=500, recovered=False).met is False
    assert run("c", ZERO, 500, 0, lost=0, acknowledged=500, recovered=False).met is False  # never recovered
    assert run("d", ZERO, 0, 0).met is False  # nothing sent proves nothing
    assert RunResult("e", "p", "f", "g", ZERO, not_run="no replicas").met is None


def test_soak_growth_is_late_window_against_post_warmup_window() -> None:
    flat = [(t, 100.0 + (40.0 if t < 30 else 0.0)) for t in range(0, 301, 2)]  # warm-up bump is ignored
    leaking = [(t, 100.0 + t * 0.1) for t in range(0, 301, 2)]
    soak = SoakResult(300, sent=6000, errors=0, rss_mib={"router": flat, "model-server": leaking})
    base, final, growth = soak.growth("router")
    assert (base, final, growth) == (100.0, 100.0, 0.0)
    _, _, leak = soak.growth("model-server")
    assert leak > 0.10
    assert soak.met is False
    assert SoakResult(300, rss_mib={"router": flat}).met is True


def test_report_rows_verdicts_and_not_run() -> None:
    runs = [
        run("shadow-killed", ZERO, 612, 0, recovered=True, time_to_recover_s=6.54, recover_means="restart to mirror"),
        run("candidate-killed", VARIANT_DIES, 615, 3, recovered=True, time_to_recover_s=5.4,
            notes=["Client errors: ReadError x3."]),
        run("worker-killed", ZERO, 320, 0, lost=0, acknowledged=320, recovered=True, time_to_recover_s=10.0),
        RunResult("replica-killed", "bandit x3 routers", "router replica killed", "<= 0.1%", VARIANT_DIES,
                  not_run="router replicas are not in services/stack/routed.py yet"),
    ]
    soak = SoakResult(300, sent=6000, errors=0, rss_mib={"router": [(t, 100.0) for t in range(0, 301, 2)]})
    text = build_report(runs, soak, {"date": "2026-12-01", "png": "reliability.png"})
    assert "| shadow-killed | p | f | 612 | 0 (0.00%) | - | yes | 6.5 s | goal | met |" in text
    assert "| candidate-killed | p | f | 615 | 3 (0.49%) | - | yes | 5.4 s | goal | **NOT met** |" in text
    assert "| worker-killed | p | f | 320 | 0 (0.00%) | 0 (of 320) | yes | 10.0 s | goal | met |" in text
    assert "not run: router replicas are not in services/stack/routed.py yet" in text
    assert "- replica-killed: <= 0.1%: not run" in text
    assert "| router | 100.0 | 100.0 | +0.0% | met |" in text
    assert "Client errors: ReadError x3." in text
    assert "![errors per second and RSS over time](reliability.png)" in text


def test_errors_per_second_buckets_every_failure() -> None:
    outcomes = [(0.1, True), (0.5, False), (1.2, False), (1.9, False), (9.7, False), (12.0, False)]
    buckets = errors_per_second(outcomes, 10.0)
    assert buckets[:3] == [1, 2, 0] and buckets[9] == 1 and buckets[10] == 1  # late ones land in the last bucket
    assert sum(buckets) == 5


def test_plot_writes_a_png(tmp_path) -> None:
    runs = [run("shadow-killed", ZERO, 10, 1, errors_per_s=[0, 1, 0])]
    soak = SoakResult(10, rss_mib={"router": [(0.0, 100.0), (2.0, 101.0)]})
    plot(runs, soak, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
