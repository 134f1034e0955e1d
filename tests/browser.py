"""The analysts' dashboard in headless Chromium (Debian ``chromium``, driven by Playwright), against a live stack.

Used by the demo test (the stack is `finsent demo` itself) and by ``scripts/dashboard_screenshot.py``.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
XSS_TITLE = 'Oil majors slump <img src=x onerror="window.__xss=1"> <script>window.__xss=2</script> & "quotes"'


def xss_item():
    from finsent.records import NewsItem

    now = datetime.now(UTC)
    return NewsItem(
        id=f"browser-xss-{int(time.time() * 1000)}",
        title=XSS_TITLE,
        source="browser-test",
        url="javascript:window.__xss=3",
        published=now,
        fetched=now,
        tickers=("FNSX",),
    )


def check_dashboard(api_url: str, kafka: str, raw_topic: str, feedback_store: Path, screenshot: Path) -> dict:
    """Open the dashboard, then: a headline published now appears live (via the whole stack), markup in it
    stays text, a filter and the ticker search narrow the table, a correction lands in the feedback store,
    the chart draws windows. Returns what it saw; raises AssertionError on the first failed expectation."""
    from playwright.sync_api import expect, sync_playwright
    from streamkit import publish_items

    seen: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
            page.goto(api_url + "/")
            expect(page.locator("#conn")).to_have_text("live", timeout=20_000)
            expect(page.locator("#items tr.item").first).to_be_visible(timeout=30_000)
            seen["rows_at_load"] = page.locator("#items tr.item").count()

            # Live: a headline published to the raw topic now is scored by the worker and pushed to the page.
            item = xss_item()
            publish_items(kafka, raw_topic, [item])
            row = page.locator(f'#items tr.item[data-id="{item.id}"]')
            t0 = time.monotonic()
            expect(row).to_be_visible(timeout=60_000)
            seen["live_latency_s"] = round(time.monotonic() - t0, 2)

            # Markup in a headline is text: exact text shown, no element created, no script run, no js: link.
            assert row.locator("td.title").inner_text() == XSS_TITLE
            assert page.locator("#items img, #items script").count() == 0
            assert row.locator("a").count() == 0  # javascript: URLs are not made links
            assert page.evaluate("window.__xss") is None

            # Filters: sentiment narrows to that sentiment; ticker search finds the one headline.
            page.select_option("#f-sentiment", "negative")
            sentiments = page.locator("#items tr.item td:nth-child(6) .badge")
            expect(sentiments.filter(has_not_text="negative")).to_have_count(0, timeout=10_000)  # reloaded, filtered
            badges = sentiments.all_inner_texts()
            assert badges and set(badges) == {"negative"}, badges
            seen["negative_rows"] = len(badges)
            page.select_option("#f-sentiment", "")
            page.fill("#f-ticker", "FNSX")
            expect(page.locator("#items tr.item")).to_have_count(1, timeout=5_000)
            assert page.locator("#items tr.item").get_attribute("data-id") == item.id
            expect(page.locator("#chart-key")).to_have_value("ticker:FNSX")  # the chart follows the search
            page.fill("#f-ticker", "")
            expect(page.locator("#items tr.item")).not_to_have_count(1, timeout=5_000)
            expect(page.locator("#chart-key")).to_have_value("")

            # Correction: one click path from the row to the feedback store.
            page.fill("#who", "browser-test@desk")
            row.locator("button.correct-btn").click()
            form = page.locator("form.correct")
            form.locator("select[name=sentiment]").select_option("neutral")
            form.locator("input[name=comment]").fill("not about a slump")
            form.locator("button[type=submit]").click()
            expect(form.locator(".result")).to_contain_text("saved", timeout=15_000)
            stored = [json.loads(line) for line in feedback_store.read_text().splitlines() if line.strip()]
            mine = [r for r in stored if r["item_id"] == item.id]
            assert mine and mine[-1]["sentiment"] == "neutral" and mine[-1]["who"] == "browser-test@desk", stored[-3:]

            # The chart has drawn closed windows for at least one series.
            expect(page.locator("#legend .key").first).to_be_visible(timeout=60_000)
            seen["chart_series"] = page.locator("#legend .key").count()
            page.wait_for_timeout(500)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
            assert not errors, errors
        finally:
            browser.close()
    return seen
