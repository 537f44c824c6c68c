"""The web console in a real headless browser (Debian's chromium driven through its chromedriver), against a
real gateway, worker, Redis and S3 endpoint. Nothing downloads a browser or a driver: both come from apt
(``make setup`` installs them), and the test does not skip when they are missing.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rerankq.cli.cluster import stop_process
from tests.integration.conftest import GatewayProcess, WorkerProcess, start_gateway

pytestmark = pytest.mark.slow

KEY = "console-key"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def gateway(queue_worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = start_gateway(queue_worker.env, tmp_path_factory.mktemp("console-gateway"), RERANKQ_API_KEYS=KEY)
    yield gw
    stop_process(gw.proc)


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1100", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def until(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def cat_png(tmp_path: Path) -> Path:
    from rerankq.cli.samples import image_bytes, noise_image

    path = tmp_path / "striped-cat.png"
    path.write_bytes(image_bytes(noise_image(96, 64, seed=7)))
    return path


def enter_key(browser: Any) -> None:
    from selenium.webdriver.common.by import By

    until(lambda: browser.find_element(By.ID, "key-dialog").get_attribute("open") is not None, 30, "the key prompt")
    browser.find_element(By.ID, "key-input").send_keys(KEY)
    browser.find_element(By.ID, "key-save").click()


def test_console_reranks_text_and_an_uploaded_image(browser: Any, gateway: GatewayProcess, tmp_path: Path,
                                                    downloads: Path, queue_worker: WorkerProcess) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(gateway.url + "/")
    enter_key(browser)  # keys are set: the page asks once, then sends it with every fetch
    image = cat_png(tmp_path)
    browser.find_element(By.ID, "query").send_keys("a striped cat")
    browser.find_element(By.ID, "candidates").send_keys(
        "a cat sleeping on a sofa\nthe stock market today\ns3://uploads/no-such-picture.png")
    browser.find_element(By.ID, "candidate-files").send_keys(str(image))
    until(lambda: browser.find_elements(By.CSS_SELECTOR, "#cand-preview img"), 10, "the thumbnail")
    browser.find_element(By.ID, "query").send_keys(Keys.ENTER)  # Enter runs it

    rows = until(lambda: browser.find_elements(By.CSS_SELECTOR, "#results tbody tr"), 120, "ranked results")
    events = browser.find_element(By.ID, "results").get_attribute("data-events").split(",")
    assert events[0] == "progress" and events[-1] == "end"  # progress seen before the result
    status = browser.find_element(By.ID, "status").text
    job_id = status.split(":")[0].removeprefix("job ")
    result = httpx.get(f"{gateway.url}/v1/jobs/{job_id}/result", headers={"Authorization": f"Bearer {KEY}"}).json()
    candidates = ["a cat sleeping on a sofa", "the stock market today", "s3://uploads/no-such-picture.png",
                  image.name]
    assert [e["index"] for e in result["errors"]] == [2]
    failed = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr.failed")
    assert len(failed) == 1 and "no-such-picture.png" in failed[0].text  # the per-document error, in the table
    rows = rows[:len(result["results"])]
    shown = [(row.find_elements(By.TAG_NAME, "td")[1].text.split("\n")[0], row.find_elements(By.TAG_NAME, "td")[2].text)
             for row in rows]
    assert [float(score) for score, _ in shown] == pytest.approx(
        [r["relevance_score"] for r in result["results"]], abs=1e-4)
    assert [text.split(" → ")[0] for _, text in shown] == [candidates[r["index"]] for r in result["results"]]
    assert browser.find_elements(By.CSS_SELECTOR, "#results tbody img")  # the thumbnail drawn from the dropped file
    browser.save_screenshot(str(tmp_path / "console-desktop.png"))

    browser.find_element(By.ID, "export-csv").click()
    browser.find_element(By.ID, "export-json").click()
    exported_csv = until(lambda: list(downloads.glob(f"rerank-{job_id}.csv")), 20, "the CSV download")[0]
    exported_json = until(lambda: list(downloads.glob(f"rerank-{job_id}.json")), 20, "the JSON download")[0]
    table = list(csv.DictReader(exported_csv.read_text().splitlines()))
    errors = [r for r in table if r["error"]]
    assert [(r["index"], r["candidate"]) for r in errors] == [("2", "s3://uploads/no-such-picture.png")]
    table = [r for r in table if not r["error"]]
    assert [int(r["index"]) for r in table] == [r["index"] for r in result["results"]]
    assert [float(r["relevance_score"]) for r in table] == pytest.approx(
        [r["relevance_score"] for r in result["results"]])
    exported = json.loads(exported_json.read_text())
    assert [r["index"] for r in exported["results"]] == [r["index"] for r in result["results"]]
    assert [(e["index"], e["candidate"]) for e in exported["errors"]] == [(2, "s3://uploads/no-such-picture.png")]

    worker_name = until(lambda: browser.find_element(By.ID, "queue-workers").text, 30, "the worker list")
    assert "rerankq-cpu-" in worker_name and "cpu" in worker_name
    rate = until(lambda: float(browser.find_element(By.ID, "pairs-rate").text or 0), 40, "non-zero pairs/s")
    assert rate > 0
    assert job_id[:12] in browser.find_element(By.ID, "recent").text
    browser.execute_script("document.getElementById('queue-title').scrollIntoView()")
    browser.save_screenshot(str(tmp_path / "console-queue.png"))
    assert_fits(browser, 375)  # with results on the page too
    browser.execute_script("document.getElementById('results-title').scrollIntoView()")
    browser.save_screenshot(str(tmp_path / "console-375-results.png"))
    browser.set_window_size(1280, 1100)
    print(f"screenshots in {tmp_path}")


def assert_fits(browser: Any, width: int) -> None:
    browser.set_window_size(width, 900)
    time.sleep(0.5)
    page, window = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert window <= width and page <= window, f"page is {page} px wide in a {window} px window"


def test_every_control_is_reachable_by_tab_and_nothing_scrolls_sideways_at_375px(
        browser: Any, gateway: GatewayProcess, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(gateway.url + "/")
    if browser.find_element(By.ID, "key-dialog").get_attribute("open") is not None:
        enter_key(browser)
    reached = set()
    for _ in range(40):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        reached.add(browser.switch_to.active_element.get_attribute("id"))
    assert {"model", "key-button", "query", "query-file", "candidates", "candidate-files", "run", "clear"} <= reached
    assert_fits(browser, 375)
    browser.save_screenshot(str(tmp_path / "console-375.png"))
