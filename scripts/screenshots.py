"""Screenshots of ``frugalvision explore`` for the README: the map, a lasso selection in the gallery, the review
queue. Written to ``docs/images/explore-*.png`` (run again to refresh them).

Data: a fixed sample of real Caltech-101 photos (``../shared/data/caltech101-dev``) embedded with the offline
EfficientNet-Lite0; the label manifest's ``prediction`` / ``score`` / ``margin`` come from the nearest class mean
(cosine, softmax with temperature 0.05), so the review queue shows genuinely uncertain images first.

    python scripts/screenshots.py [--work /tmp/explore-shots] [--sample 400] [--store STORE]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CALTECH = ROOT.parent / "shared" / "data" / "caltech101-dev"
OUT = ROOT / "docs" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/frugalvision-explore-shots"))
    parser.add_argument("--sample", type=int, default=400)
    parser.add_argument(
        "--store", type=Path, default=None, help="an existing store of Caltech photos to show"
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    store = args.store or args.work / "store"
    if not (store / "info.json").is_file():
        files = sorted(CALTECH.rglob("*.jpg"))
        files = files[:: max(1, len(files) // args.sample)][: args.sample]
        listing = args.work / "photos.csv"
        listing.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in files))
        subprocess.run([sys.executable, "-c", "from frugalvision.cli.main import main; main()", "embed", str(listing), "--out", str(store),
                        "--workers", "0", "--no-progress"], check=True)  # fmt: skip

    import uvicorn
    from playwright.sync_api import sync_playwright

    from frugalvision.embeddings import EmbeddingStore
    from frugalvision.explore import Collection, ExploreState, LabelManifest, create_app

    s = EmbeddingStore.load(store)
    names = sorted({lab[0] for lab in s.labels})
    y = np.array([names.index(lab[0]) for lab in s.labels])
    means = np.stack([s.vectors[y == c].mean(0) for c in range(len(names))])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    logits = s.vectors @ means.T / 0.05
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    top = np.sort(prob, 1)[:, ::-1]
    manifest = args.work / "labels.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "prediction", "score", "margin"])
        for i, p in enumerate(s.paths):
            w.writerow(
                [
                    p,
                    s.labels[i][0],
                    names[int(prob[i].argmax())],
                    f"{top[i, 0]:.4f}",
                    f"{top[i, 0] - top[i, 1]:.4f}",
                ]
            )
    state = ExploreState.build(Collection.open(store), manifest=LabelManifest(manifest), layout="auto")
    server = uvicorn.Server(
        uvicorn.Config(create_app(state), host="127.0.0.1", port=8799, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    OUT.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True,
                                    args=["--no-sandbox", "--use-gl=swiftshader", "--enable-unsafe-swiftshader"])  # fmt: skip
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.goto("http://127.0.0.1:8799/")
        page.wait_for_function("window.explorer.ready && window.explorer.galleryVersion > 0")
        page.wait_for_function("window.explorer.timings.galleryImages !== undefined", timeout=60000)
        pos = page.evaluate("window.explorer.toScreen(0)")
        box = page.locator("#map").bounding_box()
        page.mouse.click(box["x"] + pos["x"], box["y"] + pos["y"])
        page.wait_for_selector("#neighbours .hit img")
        page.wait_for_timeout(800)
        page.screenshot(path=str(OUT / "explore-map.png"))
        page.click("#mode-box")  # a box around the clicked photo's cluster
        cx = min(max(box["x"] + pos["x"], box["x"] + 70), box["x"] + box["width"] - 70)
        cy = min(max(box["y"] + pos["y"], box["y"] + 55), box["y"] + box["height"] - 55)
        page.mouse.move(cx - 60, cy - 45)
        page.mouse.down()
        page.mouse.move(cx + 60, cy + 45, steps=5)
        page.mouse.up()
        page.wait_for_function("window.explorer.selection !== null")
        page.wait_for_timeout(1500)
        page.screenshot(path=str(OUT / "explore-gallery.png"))
        page.click("#clear-selection")
        page.select_option("#view", "queue")
        page.wait_for_timeout(1500)
        page.select_option("#color-by", "prediction")
        page.wait_for_timeout(500)
        page.screenshot(path=str(OUT / "explore-review.png"))
        browser.close()
    server.should_exit = True
    thread.join(timeout=10)
    from PIL import Image

    for name in ("explore-map.png", "explore-gallery.png", "explore-review.png"):
        img = Image.open(OUT / name).convert("RGB")
        img.thumbnail((960, 960))
        img.quantize(colors=128).save(OUT / name, optimize=True)  # small PNGs for the README
        print(OUT / name, (OUT / name).stat().st_size // 1024, "KiB")


if __name__ == "__main__":
    main()
