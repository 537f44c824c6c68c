"""The console's embedding map in a real headless browser (Debian's chromium through its chromedriver) against a
real gateway (Redis and moto's S3 server behind it): the layout route, drawing, colours, thumbnails on hover, the
query's neighbours, PNG and CSV export, with vectors handed to the page's ``showMap``; then end to end, with a
worker of the tiny Qwen3-VL-Embedding checkpoint: the text box, a dropped file, ``/v1/embeddings``, a query."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from rerankq.cli.cluster import stop_process
from rerankq.client import RerankClient
from tests.integration.conftest import GatewayProcess, WorkerProcess, start_gateway
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


def settled(driver: Any, words: str) -> str | None:
    """The map's status once it says ``words``; an error it shows instead fails the test at once."""
    from selenium.webdriver.common.by import By

    status = driver.find_element(By.ID, "map-status")
    if "error" in (status.get_attribute("class") or ""):
        pytest.fail(f"the map says: {status.text}")
    return status.text if words in status.text else None


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


@pytest.fixture(scope="module")
def embed_gateway(embed_worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[GatewayProcess]:
    """A gateway in front of a worker of the tiny Qwen3-VL-Embedding checkpoint."""
    gw = start_gateway(embed_worker.env, tmp_path_factory.mktemp("map-embed-gateway"), RERANKQ_API_KEYS=KEY)
    yield gw
    stop_process(gw.proc)


def test_the_map_embeds_typed_items_and_a_dropped_image_through_the_queue(
        browser: Any, embed_gateway: GatewayProcess, embed_worker: WorkerProcess, tmp_path: Path,  # noqa: F811
        downloads: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(embed_gateway.url + "/")
    if browser.find_element(By.ID, "key-dialog").get_attribute("open") is not None:
        enter_key(browser)
    until(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#map-model option")) > 1, 30, "the embedding model")
    typed = ["a cat on a mat", '{"text": "a kitten asleep", "label": "cats"}',
             '{"text": "stock markets fell today", "label": "news"}', '{"text": "bond yields rose", "label": "news"}']
    box = browser.find_element(By.ID, "map-items")
    box.clear()
    box.send_keys("\n".join(typed))
    image = cat_png(tmp_path)
    browser.find_element(By.ID, "map-files").send_keys(str(image))
    until(lambda: browser.find_elements(By.CSS_SELECTOR, "#map-preview img"), 10, "the dropped file's thumbnail")
    browser.find_element(By.ID, "map-run").click()
    status = until(lambda: settled(browser, "laid out"), 180, "the map")
    assert status.startswith("5 items laid out (t-SNE"), status
    assert [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#map-legend li")] == ["(no label)", "cats",
                                                                                             "news"]
    screen = browser.execute_script("return mapState.screen")
    hover_at(browser, *screen[4])  # the dropped image: its own file as the thumbnail
    until(lambda: browser.execute_script(
        "const i = document.querySelector('#map-tip img'); return i && i.complete && i.naturalWidth"), 10,
        "the thumbnail")

    count = browser.find_element(By.ID, "map-k")
    count.clear()
    count.send_keys("3")
    browser.find_element(By.ID, "map-query").send_keys("a sleeping cat", Keys.ENTER)
    until(lambda: settled(browser, "ringed"), 120, "the neighbours")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#map-neighbours li")) == 3
    near = [li.text.split(" · ", 1) for li in browser.find_elements(By.CSS_SELECTOR, "#map-neighbours li")]

    # the neighbours are those the SDK's vectors rank first by cosine
    uploaded = browser.execute_script("return mapState.items[4].side.image")
    sides = [{"text": "a cat on a mat"}, {"text": "a kitten asleep"}, {"text": "stock markets fell today"},
             {"text": "bond yields rose"}, {"image": uploaded}]
    with RerankClient(embed_worker.settings) as client:
        items = np.array(client.embed(sides, timeout=180)["embeddings"])
        q = np.array(client.embed(["a sleeping cat"], timeout=180)["embeddings"][0])
    order = np.argsort(-(items @ q))[:3]
    names = ["a cat on a mat", "a kitten asleep", "stock markets fell today", "bond yields rose", uploaded]
    assert [n[1] for n in near] == [names[i] for i in order]
    assert [float(n[0]) for n in near] == pytest.approx(sorted(items @ q, reverse=True)[:3], abs=2e-3)
    browser.save_screenshot(str(tmp_path / "map-embedded.png"))
