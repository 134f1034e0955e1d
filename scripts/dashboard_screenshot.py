"""Take docs/dashboard.png: run `finsent demo` (scripted negative burst after 20 s) in a scratch state dir,
wait until a surge alert is firing and its case is open in the receiver, open the dashboard in headless
Chromium and screenshot the whole page, plus close-ups of the heatmap, the open alerts and the timeline
(docs/dashboard-heatmap.png, docs/dashboard-alerts.png, docs/dashboard-review.png beside it).

    .venv/bin/python scripts/dashboard_screenshot.py [out.png]
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def main(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    state = Path(tempfile.mkdtemp(prefix="finsent-shot-"))
    env = {**os.environ, "FINSENT_PATHS__STATE_DIR": str(state), "FINSENT_INGEST__DEMO_BURST_AT_S": "20"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "finsent.cli", "demo"],
        env=env,
        stdout=(state / "demo.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        while not (state / "demo.json").exists():
            assert proc.poll() is None, (state / "demo.log").read_text()[-2000:]
            time.sleep(0.5)
        url = json.loads((state / "demo.json").read_text())["urls"]["dashboard"]
        deadline = time.monotonic() + 300
        while not httpx.get(url + "alerts", params={"state": "firing"}, timeout=5).json()["alerts"]:
            assert time.monotonic() < deadline, "no surge alert in 5 minutes"
            print("waiting for a surge alert…", file=sys.stderr)
            time.sleep(5)
        time.sleep(20)  # a few more windows on the chart
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.goto(url)
            page.wait_for_selector("#legend .key", timeout=60_000)
            page.wait_for_selector("#cases li.case", timeout=180_000)  # Alertmanager -> receiver -> case
            page.wait_for_selector("#review tr", timeout=60_000)
            page.wait_for_timeout(1500)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))  # the first 2000 px: panels, review queue, the newest headlines
            close_ups = {"heatmap": ".heatmap-panel", "alerts": ".cases-panel", "review": ".review-panel"}
            for name, selector in close_ups.items():
                page.locator(selector).screenshot(path=str(out.with_name(f"{out.stem}-{name}.png")))
            page.locator(".timeline-panel").screenshot(path=str(out.with_name(f"{out.stem}-timeline.png")))
            browser.close()
        print(f"wrote {out} and its close-ups", file=sys.stderr)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/dashboard.png"))
