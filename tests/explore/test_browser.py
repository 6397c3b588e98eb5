"""The explorer in a real headless Chromium (Debian's, through Playwright): the page loads without a console
error, the map holds every row, a clicked point shows `frugalvision search`'s neighbours, a relabel in the page
changes the manifest on disk and undo restores it, and a photo upload finds `frugalvision search`'s results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from frugalvision.cli.main import cli
from frugalvision.data import read_manifest
from frugalvision.explore import Collection, ExploreState, LabelManifest, create_app
from helpers import live_server


@pytest.fixture
def page(browser, explore_data, manifest):
    state = ExploreState.build(
        Collection.open(explore_data["index"]), manifest=LabelManifest(manifest), layout="pca"
    )
    with live_server(create_app(state)) as url:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        pg = context.new_page()
        errors: list[str] = []
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(url)
        pg.wait_for_function("window.explorer && window.explorer.ready", timeout=20000)
        pg.errors = errors
        pg.state = state
        yield pg
        context.close()


def _labels(path: Path) -> dict[str, tuple[str, ...]]:
    ds = read_manifest(path)
    return {str(s.path): tuple(ds.classes[c] for c in s.labels) for s in ds.samples}


def _cli_search(index: Path, image: str, *extra: str) -> list[dict]:
    result = CliRunner().invoke(
        cli, ["search", str(index), image, "-k", "10", "--json", *extra], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)[0]["results"]


def test_page_loads_and_the_map_holds_every_row(page):
    assert page.evaluate("window.explorer.pointCount") == 40
    assert page.get_attribute("#map", "data-points") == "40"
    page.wait_for_selector("#gallery .item")
    assert page.locator("#gallery .item").count() == 40
    page.wait_for_function("window.explorer.timings.galleryImages !== undefined")
    first = page.locator("#scatter a").first  # the most scattered class filters the gallery
    label = first.get_attribute("data-label")
    first.click()
    page.wait_for_function(f"[...document.querySelectorAll('#gallery .item')].every(e => e.dataset.label === {label!r})"
                           " && document.querySelectorAll('#gallery .item').length < 40")  # fmt: skip
    assert page.errors == []


def test_clicking_a_point_shows_the_search_neighbours(page, explore_data):
    pos = page.evaluate("window.explorer.toScreen(7)")
    box = page.locator("#map").bounding_box()
    page.mouse.click(box["x"] + pos["x"], box["y"] + pos["y"])
    page.wait_for_selector("#neighbours .hit")
    query = page.get_attribute("#neighbours .query-path", "data-path")  # the point under the cursor
    shown = page.eval_on_selector_all(
        "#neighbours .hit", "els => els.map(e => [e.dataset.path, Number(e.dataset.score)])"
    )
    expected = _cli_search(explore_data["index"], query)
    assert [p for p, _ in shown] == [h["path"] for h in expected]
    assert [s for _, s in shown] == pytest.approx([h["score"] for h in expected], abs=1e-4)
    assert page.errors == []


def test_relabel_in_the_page_writes_the_manifest_and_undo_restores_it(page, manifest):
    before = _labels(manifest)
    page.wait_for_selector("#gallery .item")
    item = page.locator("#gallery .item").nth(5)
    path = str(Path(item.get_attribute("data-path")).resolve())
    new = "class07" if before[path] != ("class07",) else "class00"
    item.locator("select[data-act=correct]").select_option(new)
    page.wait_for_function("document.getElementById('status').textContent.startsWith('correct: 1')")
    after = _labels(manifest)
    assert after[path] == (new,) and {p: v for p, v in after.items() if p != path} == {
        p: v for p, v in before.items() if p != path
    }
    page.wait_for_selector(f"#gallery .item[data-id='{item.get_attribute('data-id')}'][data-label='{new}']")
    page.click("#undo")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('undid')")
    assert _labels(manifest) == before
    assert page.errors == []


def test_lasso_selection_fills_the_gallery(page):
    box = page.locator("#map").bounding_box()
    page.click("#mode-lasso")
    cx, cy, r = (
        box["x"] + box["width"] / 2,
        box["y"] + box["height"] / 2,
        min(box["width"], box["height"]) / 2,
    )
    page.mouse.move(cx - r, cy - r)
    page.mouse.down()
    for x, y in ((cx, cy - r), (cx, cy + r), (cx - r, cy + r), (cx - r, cy - r)):
        page.mouse.move(x, y, steps=3)
    page.mouse.up()
    page.wait_for_function("window.explorer.selection !== null")
    expected = page.evaluate(
        """() => { const E = window.explorer, out = [], b = document.getElementById('map').getBoundingClientRect();
        for (let i = 0; i < E.pointCount; i++) { const p = E.toScreen(i);
          if (p.x <= b.width / 2 && p.y <= b.height / 2 + Math.min(b.width, b.height) / 2) out.push(i); } return out; }"""
    )  # the left half of the map's central square, from the points' screen positions
    selected = page.evaluate("Array.from(window.explorer.selection)")
    assert 0 < len(selected) < 40 and sorted(selected) == sorted(expected)
    page.wait_for_function(f"document.querySelectorAll('#gallery .item').length === {len(selected)}")


def test_upload_search_finds_the_search_results(page, explore_data):
    image = str(sorted(explore_data["images"].glob("class03/*.png"))[1])
    page.set_input_files("#upload", image)
    page.wait_for_selector("#neighbours .query-path.upload")
    shown = page.eval_on_selector_all(
        "#neighbours .hit", "els => els.map(e => [e.dataset.path, Number(e.dataset.score)])"
    )
    expected = _cli_search(explore_data["index"], image, "--include-self")  # an upload is not a stored file
    assert [p for p, _ in shown] == [h["path"] for h in expected] and shown[0][0] == image
    assert [s for _, s in shown] == pytest.approx([h["score"] for h in expected], abs=1e-4)
    assert page.errors == []


def test_store_without_manifest_with_quality_views(browser, explore_data):
    from frugalvision.explore import duplicate_group_ids

    col = Collection.open(explore_data["store"])
    v = col.vectors()
    ood = -(v @ v.mean(0))  # any per-row score
    state = ExploreState.build(
        col, ood=ood.astype("float64"), groups=duplicate_group_ids(v, 0.9), layout="pca"
    )
    with live_server(create_app(state)) as url:
        pg = browser.new_page()
        errors: list[str] = []
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(url)
        pg.wait_for_function("window.explorer.ready && window.explorer.galleryVersion > 0")
        assert pg.is_hidden("#bulk")
        assert pg.eval_on_selector_all("#view option", "os => os.map(o => o.value)") == [
            "all",
            "ood",
            "duplicates",
        ]
        pg.select_option("#color-by", "ood")
        pg.select_option("#view", "ood")
        pg.wait_for_function("window.explorer.galleryVersion > 1")
        first = pg.get_attribute("#gallery .item", "data-id")
        assert int(first) == int(ood.argmax())
        pg.close()
        assert errors == []
