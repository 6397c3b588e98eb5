"""Load test of the HTTP service on the loopback interface: throughput, latency, errors under concurrent clients.

Usage::

    python benchmarks/serve_load.py                          # exports EfficientNet-Lite0 first (needs torch)
    python benchmarks/serve_load.py --model lite0-onnx --clients 8 --seconds 20 --precision int8

Starts ``frugalvision serve`` in a subprocess on 127.0.0.1 (a free port), waits for ``/health``, then runs
``--clients`` concurrent httpx clients, each posting one real JPEG photo after another to ``/embed`` for
``--seconds``. Prints requests/s, p50/p90/p99 latency, the count of non-2xx answers and the service's batching
statistics, then stops the server. Everything is bounded: the clients stop at the deadline, the server is
terminated (then killed) at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "caltech101-dev"


def _photos(count: int = 16) -> list[bytes]:
    """Real JPEG photos: Caltech-101 files when present, else scikit-image's samples re-encoded."""
    if SHARED.exists():
        files = sorted(SHARED.rglob("*.jpg"))
        return [files[i].read_bytes() for i in np.linspace(0, len(files) - 1, count).astype(int)]
    import skimage.data as data

    out = []
    for photo in (data.astronaut(), data.coffee(), data.chelsea(), data.rocket()):
        buf = io.BytesIO()
        Image.fromarray(photo).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _export_lite0(folder: Path) -> Path:
    from frugalvision.deploy import export_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_backbone("tf_efficientnet_lite0.in1k_offline", folder)
    return folder


async def _client(client: httpx.AsyncClient, photos: list[bytes], offset: int, deadline: float,
                  latencies: list[float], statuses: list[int]) -> None:  # fmt: skip
    i = offset
    while time.perf_counter() < deadline:
        body = photos[i % len(photos)]
        i += 1
        start = time.perf_counter()
        try:
            r = await client.post("/embed", files={"file": ("photo.jpg", body, "image/jpeg")})
            status = r.status_code
        except httpx.HTTPError:
            status = 599
        latencies.append(time.perf_counter() - start)
        statuses.append(status)


async def _load(base: str, clients: int, seconds: float) -> tuple[list[float], list[int], float, dict]:
    photos = _photos()
    latencies: list[float] = []
    statuses: list[int] = []
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60.0, limits=limits) as client:
        await client.post("/embed", files={"file": ("warm.jpg", photos[0], "image/jpeg")})  # warm-up
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(
            *(_client(client, photos, k, deadline, latencies, statuses) for k in range(clients))
        )
        elapsed = time.perf_counter() - start
        info = (await client.get("/info")).json()
    return latencies, statuses, elapsed, info


def _wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the server did not answer /health within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="deploy bundle (default: export Lite0 to a temp folder)"
    )
    parser.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of the load")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime threads of the server"
    )
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    args = parser.parse_args()
    if not 1 <= args.clients <= 256 or not 0 < args.seconds <= 600:
        parser.error("--clients must be in [1, 256] and --seconds in (0, 600]")

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            print("exporting EfficientNet-Lite0 (offline weights) ...", flush=True)
            model = _export_lite0(Path(tmp) / "lite0-onnx")
            if args.precision == "int8":
                from frugalvision.deploy import quantize_int8

                calib = [Image.open(io.BytesIO(b)).convert("RGB") for b in _photos(64)]
                quantize_int8(model, calib, max_images=64, check_images=0)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-c", "from frugalvision.cli.main import main; main()", "serve", str(model),
               "--host", "127.0.0.1", "--port", str(port), "--precision", args.precision, "--threads", str(args.threads),
               "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--log-level", "warning"]  # fmt: skip
        proc = subprocess.Popen(cmd)
        try:
            _wait_healthy(base, proc)
            load = os.getloadavg()
            print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {args.clients} clients for "
                  f"{args.seconds:.0f} s, server threads={args.threads}, max_batch={args.max_batch}, "
                  f"max_wait_ms={args.max_wait_ms}, precision={args.precision}", flush=True)  # fmt: skip
            latencies, statuses, elapsed, info = asyncio.run(_load(base, args.clients, args.seconds))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
    lat = np.array(latencies) * 1000
    bad = sum(1 for s in statuses if not 200 <= s < 300)
    batching = info.get("batching", {})
    load = os.getloadavg()
    print(
        "| requests | req/s (= images/s) | p50 ms | p90 ms | p99 ms | non-2xx | mean batch | largest batch |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {len(statuses)} | {len(statuses) / elapsed:.1f} | {np.percentile(lat, 50):.0f} | "
          f"{np.percentile(lat, 90):.0f} | {np.percentile(lat, 99):.0f} | {bad} | {batching.get('mean_batch')} | "
          f"{batching.get('largest')} |")  # fmt: skip
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if bad:
        sys.exit(f"{bad} non-2xx answers under the nominal load")


if __name__ == "__main__":
    main()
