"""Where a run reads the gateways' ``/metrics`` (harness/runner/scrape.py): each gateway at its
own address behind the balancer, and their texts read together as one."""

from __future__ import annotations

from collections import Counter

from harness.runner.scrape import cross_check, metrics_urls, parse_tiers
from reports.prom import parse_histograms


def comp(name: str, role: str, port: int) -> dict[str, object]:
    return {"name": name, "role": role, "address": f"127.0.0.1:{port}"}


def test_behind_the_balancer_each_gateway_is_scraped_at_its_own_address():
    manifest = {
        "components": [
            comp("region", "region", 7000),
            comp("gateway-0", "gateway", 7001),
            comp("gateway-1", "gateway", 7002),
            comp("lb", "lb", 7003),
        ]
    }
    urls = metrics_urls("http://127.0.0.1:7003", manifest)
    assert urls == ("http://127.0.0.1:7001", "http://127.0.0.1:7002")


def test_one_gateway_or_a_generic_target_is_scraped_at_the_base_url():
    alone = {"components": [comp("gateway", "gateway", 7001)]}
    assert metrics_urls("http://127.0.0.1:7001", alone) == ("http://127.0.0.1:7001",)
    assert metrics_urls("http://svc", {"components": [{"name": "web"}]}) == ("http://svc",)
    assert metrics_urls("http://svc", {}) == ("http://svc",)


def text(primary: int, replica: int, fast: int) -> str:
    return (
        "# HELP recchaos_requests_total Requests.\n"
        "# TYPE recchaos_requests_total counter\n"
        f'recchaos_requests_total{{tier="primary",outcome="ok"}} {primary}\n'
        f'recchaos_requests_total{{tier="replica",outcome="ok"}} {replica}\n'
        "# HELP recchaos_request_seconds Request time.\n"
        "# TYPE recchaos_request_seconds histogram\n"
        f'recchaos_request_seconds_bucket{{le="0.01"}} {fast}\n'
        f'recchaos_request_seconds_bucket{{le="+Inf"}} {primary + replica}\n'
        f"recchaos_request_seconds_sum 0.1\n"
        f"recchaos_request_seconds_count {primary + replica}\n"
    )


def test_the_gateways_texts_one_after_the_other_count_together():
    both = text(10, 2, 11) + text(5, 1, 6)
    assert parse_tiers(both) == {"primary": 15, "replica": 3}
    assert parse_histograms(both)[("recchaos_request_seconds", "gateway total")] == [
        (0.01, 17.0),
        (float("inf"), 18.0),
    ]
    before = parse_tiers(text(1, 0, 1) + text(1, 0, 1))
    out = cross_check(before, parse_tiers(both), Counter({"primary": 13, "replica": 3}))
    assert out["agree"] is True, out
