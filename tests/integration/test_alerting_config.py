"""The shipped Prometheus rules and Alertmanager routing, checked by the real promtool and amtool."""

import re
import subprocess
from pathlib import Path

import yaml
from conftest import make_settings

from finsent.local.services import ALERTMANAGER_CONFIG, RULES_DIR, render_alertmanager_config

RUNBOOKS = Path(__file__).resolve().parents[2] / "docs" / "runbooks.md"


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_rules_are_valid():
    r = run("promtool", "check", "rules", *map(str, RULES_DIR.glob("*.yml")))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_alert_has_promtool_unit_tests_and_they_pass():
    tests = sorted((RULES_DIR / "tests").glob("*.yml"))
    r = run("promtool", "test", "rules", *map(str, tests))
    assert r.returncode == 0, r.stdout + r.stderr
    alerts = {
        rule["alert"]
        for f in RULES_DIR.glob("*.yml")
        for g in yaml.safe_load(f.read_text())["groups"]
        for rule in g["rules"]
        if "alert" in rule
    }
    tested = {
        t["alertname"]
        for f in tests
        for case in yaml.safe_load(f.read_text())["tests"]
        for t in case.get("alert_rule_test", [])
    }
    assert alerts == tested, f"alerts without a promtool test: {alerts - tested}"
    assert alerts >= {
        "NegativeSentimentSurge",
        "FeedStale",
        "FeedErrors",
        "WorkerDown",
        "ConsumerLagHigh",
        "InferenceSlow",
        "DeadLettersGrowing",
        "AggregatorDown",
        "AggregatorStuck",
        "WatermarkStalled",
        "WatermarkAhead",
        "LateItemsHigh",
        "ItemsRejectedTooLate",
    }


def alert_rules() -> list[dict]:
    return [
        rule
        for f in RULES_DIR.glob("*.yml")
        for g in yaml.safe_load(f.read_text())["groups"]
        for rule in g["rules"]
        if "alert" in rule
    ]


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped, spaces to hyphens."""
    return {
        re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        for m in re.finditer(r"^#{1,6} (.+)$", markdown, re.M)
    }


def test_every_alert_links_a_runbook_section_that_exists():
    sections = anchors(RUNBOOKS.read_text())
    for rule in alert_rules():
        url = rule["annotations"].get("runbook_url", "")
        path, _, anchor = url.partition("#")
        assert path == "docs/runbooks.md" and anchor, f"{rule['alert']}: runbook_url {url!r}"
        assert anchor in sections, f"{rule['alert']}: no section #{anchor} in docs/runbooks.md"
        section = RUNBOOKS.read_text().split(f"## {rule['alert']}\n", 1)[-1].split("\n## ", 1)[0]
        assert all(part in section for part in ("**Means.**", "**Check.**", "**Fix.**")), rule["alert"]
    assert "aggregatordown" in sections and "no-such-alert" not in sections  # the slugs are computed, not assumed


def test_a_broken_rule_file_is_caught(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(foo[5m]) > \n")
    assert run("promtool", "check", "rules", str(bad)).returncode != 0


def test_alertmanager_config_is_valid_and_routes_market_and_pipeline_apart():
    r = run("amtool", "check-config", str(ALERTMANAGER_CONFIG))
    assert r.returncode == 0, r.stdout + r.stderr
    for labels, receiver in (
        (["alertname=NegativeSentimentSurge", "kind=market", "severity=critical", "dim=topic"], "compliance"),
        (["alertname=WorkerDown", "kind=pipeline", "severity=critical"], "operations"),
    ):
        r = run("amtool", "config", "routes", "test", "--config.file", str(ALERTMANAGER_CONFIG), *labels)
        assert r.returncode == 0 and r.stdout.strip() == receiver, r.stdout + r.stderr


def test_rendered_config_points_at_this_receiver_and_keeps_the_token_out_of_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FINSENT_RECEIVER__TOKEN", "t0ken-from-env")
    settings = make_settings(tmp_path, receiver={"port": 19999})
    out = render_alertmanager_config(settings, tmp_path)
    text = out.read_text()
    assert "127.0.0.1:19999/alertmanager" in text and "t0ken-from-env" not in text
    token_file = Path(
        yaml.safe_load(text)["receivers"][0]["webhook_configs"][0]["http_config"]["authorization"]["credentials_file"]
    )
    assert token_file.read_text() == "t0ken-from-env" and oct(token_file.stat().st_mode & 0o777) == "0o600"
    r = run("amtool", "check-config", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
