"""Benchmark of ``frugalvision explore`` in a real headless Chromium (Playwright): time to first map paint, time
for a lasso of about 5,000 points to fill the gallery, and the server's memory, at 10,000 and 100,000 images.

Data: real Caltech-101 photos (``../shared/data/caltech101-dev``, a fixed sample of ``--sample`` images embedded
once with the offline EfficientNet-Lite0) repeated with Gaussian noise (sigma 0.02 per coordinate, then
L2-normalised) up to N rows; every row references one of the sampled photos, so thumbnails exist for a sample of
the files. The server runs as its own process (``frugalvision explore STORE --layout pca``; UMAP takes minutes at
100k on two cores, and is cached after the first run), started after its layout is cached, so the numbers are for
opening an explored store again. Timings are wall-clock on a shared machine: indicative, one run.

    python benchmarks/explore.py                      # 10k and 100k
    python benchmarks/explore.py --sizes 10000 --work /tmp/explore-bench
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CALTECH = ROOT.parent / "shared" / "data" / "caltech101-dev"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def base_store(work: Path, sample: int) -> Path:
    """The real embeddings of ``sample`` Caltech photos (every k-th file in sorted order), embedded once."""
    out = work / f"caltech-{sample}"
    if (out / "info.json").is_file():
        return out
    files = sorted(p for p in CALTECH.rglob("*.jpg"))
    step = max(1, len(files) // sample)
    manifest = work / f"caltech-{sample}.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in files[::step][:sample]))
    subprocess.run([sys.executable, "-c", "from frugalvision.cli.main import main; main()", "embed", str(manifest), "--out", str(out),
                    "--workers", "0", "--no-progress"], check=True)  # fmt: skip
    return out


def big_store(base: Path, n: int, work: Path) -> Path:
    from frugalvision.embeddings import EmbeddingStore

    out = work / f"store-{n}"
    if (out / "info.json").is_file():
        return out
    src = EmbeddingStore.load(base)
    rng = np.random.default_rng(0)
    rows = np.arange(n) % len(src)
    vec = src.vectors[rows] + rng.normal(0, 0.02, (n, src.dim)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    EmbeddingStore(
        vec, [src.paths[i] for i in rows], [src.labels[i] for i in rows], src.classes, src.info
    ).save(out)
    return out


def measure(store: Path, browser: object) -> dict[str, float]:
    from frugalvision.explore import Collection

    t = time.perf_counter()
    Collection.open(store).layout("pca")  # cached once (the first `frugalvision explore` does the same)
    layout_s = time.perf_counter() - t
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [
        sys.executable,
        "-c",
        "from frugalvision.cli.main import main; main()",
        "explore",
        str(store),
        "--layout",
        "pca",
        "--port",
        str(port),
    ]
    t = time.perf_counter()
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            line = server.stderr.readline() if server.stderr else ""
            if "http://" in line or server.poll() is not None:
                break
        time.sleep(0.3)
        startup_s = time.perf_counter() - t
        page = browser.new_page(viewport={"width": 1400, "height": 900})  # type: ignore[attr-defined]
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("window.explorer && window.explorer.timings.firstPaint", timeout=60000)
        first_paint = page.evaluate("window.explorer.timings.firstPaint")
        page.wait_for_function("window.explorer.ready && window.explorer.galleryVersion > 0", timeout=60000)
        # a lasso (a 48-gon drawn with the mouse) around the ~5,000 points nearest the map's centre of mass
        centre, radius = page.evaluate(
            """() => { const E = window.explorer, n = E.pointCount, pts = [];
              let sx = 0, sy = 0; for (let i = 0; i < n; i++) { const p = E.toScreen(i); pts.push(p); sx += p.x; sy += p.y; }
              const c = {x: sx / n, y: sy / n}, d = pts.map(p => Math.hypot(p.x - c.x, p.y - c.y)).sort((a, b) => a - b);
              return [c, d[Math.min(n, 5000) - 1] * 1.01]; }"""
        )
        box = page.locator("#map").bounding_box()
        page.click("#mode-lasso")
        ox, oy = box["x"] + centre["x"], box["y"] + centre["y"]
        page.mouse.move(ox + radius, oy)
        page.mouse.down()
        for a in range(1, 49):
            page.mouse.move(
                ox + radius * math.cos(a * math.pi / 24), oy + radius * math.sin(a * math.pi / 24)
            )
        before = page.evaluate("window.explorer.galleryVersion")
        page.mouse.up()
        page.wait_for_function(f"window.explorer.galleryVersion > {before}", timeout=60000)
        page.wait_for_function(
            "window.explorer.timings.galleryImages >= window.explorer.timings.galleryFilled", timeout=60000
        )
        t0, filled, images = page.evaluate(
            "[window.explorer.timings.selectStart, window.explorer.timings.galleryFilled, window.explorer.timings.galleryImages]"
        )
        selected = page.evaluate("window.explorer.selection.length")
        rss = _rss_mib(server.pid)
        page.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
    return {"layout_s": layout_s, "startup_s": startup_s, "first_paint_ms": first_paint, "selected": selected,
            "lasso_gallery_ms": filled - t0, "lasso_thumbs_ms": images - t0, "rss_mib": rss}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--sample", type=int, default=600, help="Caltech photos embedded for real")
    parser.add_argument("--work", type=Path, default=Path("/tmp/frugalvision-explore-bench"))
    parser.add_argument("--clean", action="store_true", help="remove --work afterwards")
    args = parser.parse_args()
    if not CALTECH.is_dir():
        sys.exit(f"real data {CALTECH} not available")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        sys.exit("no Chromium found (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    args.work.mkdir(parents=True, exist_ok=True)
    base = base_store(args.work, args.sample)
    results = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True,
                                    args=["--no-sandbox", "--use-gl=swiftshader", "--enable-unsafe-swiftshader"])  # fmt: skip
        for n in args.sizes:
            results[n] = measure(big_store(base, n, args.work), browser)
        browser.close()
    print(f"\nfrugalvision explore, headless Chromium {exe} (software WebGL), one run, shared 2-core CPU\n")
    print("| images | open store + PCA layout (once) s | server start s | first map paint ms | lasso: points | lasso -> gallery ms | "
          "lasso -> thumbnails loaded ms | server RSS MiB |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, r in results.items():
        print(f"| {n:,} | {r['layout_s']:.1f} | {r['startup_s']:.1f} | {r['first_paint_ms']:.0f} | {r['selected']:,} | "
              f"{r['lasso_gallery_ms']:.0f} | {r['lasso_thumbs_ms']:.0f} | {r['rss_mib']:.0f} |")  # fmt: skip
    for n, r in results.items():
        print(
            f"{n:,}: first paint {r['first_paint_ms'] / 2000:.2f} x the 2 s target, lasso {r['lasso_gallery_ms'] / 1000:.2f} x the 1 s target"
        )
    print(json.dumps(results))
    if args.clean:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
