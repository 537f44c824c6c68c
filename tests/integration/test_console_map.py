"""The console's embedding map in a real headless browser (Debian's chromium through its chromedriver) against a
real gateway (Redis and moto's S3 server behind it): the layout route, drawing, colours, thumbnails on hover, the
query's neighbours, PNG and CSV export. Vectors are handed to the page's ``showMap`` here; with an embedding
worker, the end-to-end test goes through the text box, an upload and ``/v1/embeddings``."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.conftest import GatewayProcess
from tests.integration.test_console import assert_fits, browser, cat_png, downloads, until  # noqa: F401
from tests.integration.test_embedding_map import HEADERS, KEY, clustered, map_gateway  # noqa: F401

pytestmark = pytest.mark.slow

GROUPS = ["cats", "news", "boats"]
TAB10 = [(31, 119, 180), (255, 127, 14), (44, 160, 44)]


def enter_key(driver: Any) -> None:
    from selenium.webdriver.common.by import By

    until(lambda: driver.find_element(By.ID, "key-dialog").get_attribute("open") is not None, 30, "the key prompt")
    driver.find_element(By.ID, "key-input").send_keys(KEY)
    driver.find_element(By.ID, "key-save").click()


def pixel(driver: Any, x: float, y: float) -> tuple[int, int, int]:
    rgba = driver.execute_script(
        "const c = document.getElementById('map-canvas'), r = window.devicePixelRatio || 1;"
        "return Array.from(c.getContext('2d').getImageData(Math.round(arguments[0] * r), Math.round(arguments[1] * r),"
        " 1, 1).data);", x, y)
    return tuple(rgba[:3])


def hover_at(driver: Any, x: float, y: float) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, "map-canvas")
    size = canvas.size
    ActionChains(driver).move_to_element_with_offset(canvas, int(x - size["width"] / 2),
                                                      int(y - size["height"] / 2)).perform()


def test_the_map_panel_draws_colours_hovers_finds_neighbours_and_exports(
        browser: Any, map_gateway: GatewayProcess, tmp_path: Path, downloads: Path) -> None:  # noqa: F811
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    png = cat_png(tmp_path).read_bytes()
    uri = httpx.post(f"{map_gateway.url}/v1/media", headers=HEADERS,
                     files={"file": ("cat.png", png, "image/png")}).json()["uri"]
    items = [{"side": {"image": uri} if k == 0 else {"text": f"{GROUPS[k // 4]} item {k}"}, "label": GROUPS[k // 4],
              "line": k + 1} for k in range(12)]
    vectors = clustered(per=4)
    browser.get(map_gateway.url + "/")
    enter_key(browser)
    browser.execute_script("return showMap(arguments[0], arguments[1], 'posted vectors')", items, vectors.tolist())
    status = browser.find_element(By.ID, "map-status").text
    assert status.startswith("12 items laid out (t-SNE, perplexity 3.67), posted vectors"), status
    assert [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#map-legend li")] == GROUPS
    screen = browser.execute_script("return mapState.screen")
    assert len(screen) == 12
    for k, (x, y) in enumerate(screen):  # each point is drawn in its label's colour
        assert pixel(browser, x, y) == TAB10[k // 4], k

    hover_at(browser, *screen[0])  # the uploaded image, read back through GET /v1/media
    tip = until(lambda: browser.find_element(By.ID, "map-tip").is_displayed(), 10, "the tooltip")
    tip = browser.find_element(By.ID, "map-tip")
    assert "cats · image" in tip.text
    assert until(lambda: browser.execute_script(
        "const i = document.querySelector('#map-tip img'); return i && i.complete && i.naturalWidth"), 10,
        "the thumbnail") == 96
    hover_at(browser, *screen[6])
    until(lambda: "news item 6" in browser.find_element(By.ID, "map-tip").text, 10, "the text in the tooltip")

    query = (vectors[9] + 0.02 * vectors[10]).tolist()
    browser.execute_script("return showQuery('a boat', arguments[0], 3)", query)
    near = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#map-neighbours li")]
    assert len(near) == 3 and near[0].endswith("boats item 9")
    assert all(n.split(" · ")[1].startswith("boats item") for n in near)
    assert 'the 3 nearest "a boat" ringed' in browser.find_element(By.ID, "map-status").text
    layout = browser.execute_script("return mapState.layout")
    assert layout["neighbours"][0]["index"] == 9 and layout["query_point"] is not None

    Select(browser.find_element(By.ID, "map-colour")).select_by_value("modality")
    assert [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#map-legend li")] == ["image", "text"]
    screen = browser.execute_script("return mapState.screen")
    assert pixel(browser, *screen[0]) == TAB10[0] and pixel(browser, *screen[5]) == TAB10[1]
    browser.save_screenshot(str(tmp_path / "map-desktop.png"))

    browser.find_element(By.ID, "map-csv").click()
    browser.find_element(By.ID, "map-png").click()
    table_file = until(lambda: list(downloads.glob("embedding-map.csv")), 20, "the CSV download")[0]
    picture = until(lambda: list(downloads.glob("embedding-map.png")), 20, "the PNG download")[0]
    rows = list(csv.DictReader(io.StringIO(table_file.read_text())))
    assert [r["index"] for r in rows] == [str(k) for k in range(12)] + ["query"]
    assert [r["label"] for r in rows[:12]] == [g for g in GROUPS for _ in range(4)]
    assert rows[0]["ref"] == f"{uri}" and rows[0]["modality"] == "image"
    assert {r["index"] for r in rows if r["neighbour_rank"]} <= {"8", "9", "10", "11"}
    assert np.allclose([[float(r["x"]), float(r["y"])] for r in rows[:12]], layout["points"])
    time.sleep(0.5)  # the download is renamed into place when complete
    with Image.open(picture) as image:
        assert image.size == (1200, 760)
        drawn = {tuple(p) for p in np.asarray(image.convert("RGB")).reshape(-1, 3)}
    assert set(TAB10[:2]) <= drawn  # the points, by modality

    Select(browser.find_element(By.ID, "map-method")).select_by_value("pca")
    until(lambda: "(PCA)" in browser.find_element(By.ID, "map-status").text, 30, "the PCA layout")
    assert len(browser.execute_script("return mapState.layout.neighbours")) == 3  # the query is kept
    assert_fits(browser, 375)
    browser.execute_script("document.getElementById('map-title').scrollIntoView()")
    browser.save_screenshot(str(tmp_path / "map-375.png"))
    browser.set_window_size(1280, 1100)
    print(f"screenshots in {tmp_path}")


def test_a_bad_line_is_named_before_anything_is_sent(browser: Any, map_gateway: GatewayProcess  # noqa: F811
                                                     ) -> None:
    from selenium.webdriver.common.by import By

    browser.get(map_gateway.url + "/")
    if browser.find_element(By.ID, "key-dialog").get_attribute("open") is not None:
        enter_key(browser)
    browser.find_element(By.ID, "map-items").send_keys('a fox\n{"text": "x", "colour": "red"}')
    browser.find_element(By.ID, "map-run").click()
    status = until(lambda: "line 2" in browser.find_element(By.ID, "map-status").text
                   and browser.find_element(By.ID, "map-status").text, 10, "the status")
    assert status == "line 2, field colour: unknown field (allowed: text, image, video, label)"
    assert "error" in browser.find_element(By.ID, "map-status").get_attribute("class")
