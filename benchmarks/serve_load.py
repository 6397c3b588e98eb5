"""Load test of the HTTP service on the loopback interface: throughput, latency, errors under concurrent clients.

Usage::

    python benchmarks/serve_load.py                          # exports EfficientNet-Lite0 first (needs torch)
    python benchmarks/serve_load.py --model lite0-onnx --clients 8 --seconds 20 --precision int8
    python benchmarks/serve_load.py --model lite0-onnx --overload --before ../main/src   # overload, old vs new

Starts ``frugalvision serve`` in a subprocess on 127.0.0.1 (a free port), waits for ``/health``, then:

* nominal (default): ``--clients`` concurrent httpx clients, each posting one real JPEG photo after another to
  ``/embed`` for ``--seconds``. Prints requests/s, p50/p90/p99 latency, the count of non-2xx answers and the
  service's batching statistics.
* ``--overload``: first measures the sustainable load -- the rate of 200 answers of this checkout's server
  kept busy by open-loop requests of ``--images`` photos for ``--calib-seconds``, sent at 3x the rate that
  ``--calib-clients`` closed-loop clients get (the same rate is then used for ``--before``) -- then sends requests
  at 1x, 2x and 6x that rate (``--multiples``), open loop (Poisson arrivals that do not wait for answers, as
  independent users do; a refused request is not retried), each for ``--seconds``. Prints, per load: requests
  sent, 200 / 503 / other answers, p50 and p99 latency of the *accepted* (200) requests and accepted images/s
  (images of the 200 answers that arrived while requests were being sent, per second: the throughput of the
  loaded server, without the tail of a backlog drained afterwards). With ``--before SRC``, the same loads (same rate)
  are then sent to a server running the code of another checkout (``SRC`` is its ``src`` folder), e.g. the
  code before a change; both tables are printed, same machine, same run.

Everything is bounded: at most ``--max-requests`` requests per load, a 60 s timeout per request, clients stop at
the deadline, the server is terminated (then killed) at the end. Only 127.0.0.1 is loaded.
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
SRC = Path(__file__).resolve().parents[1] / "src"
REQUEST_TIMEOUT_S = 60.0


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


# ------------------------------------------------------------------------------------------------ overload
def _multipart(photos: list[bytes], images: int, count: int) -> list[tuple[bytes, str]]:
    """``count`` ready-made request bodies of ``images`` photos each (built once: the clients spend no CPU)."""
    bodies = []
    for k in range(count):
        files = [
            ("file", (f"{j}.jpg", photos[(k * images + j) % len(photos)], "image/jpeg"))
            for j in range(images)
        ]
        request = httpx.Request("POST", "http://x/embed", files=files)
        bodies.append((request.read(), request.headers["content-type"]))
    return bodies


async def _post(client: httpx.AsyncClient, body: tuple[bytes, str]) -> tuple[int, float, float]:
    """(status, latency s, end time); 599 for a transport error or timeout."""
    start = time.perf_counter()
    try:
        r = await client.post("/embed", content=body[0], headers={"content-type": body[1]})
        status = r.status_code
    except httpx.HTTPError:
        status = 599
    end = time.perf_counter()
    return status, end - start, end


async def _closed_loop_rate(
    base: str, bodies: list[tuple[bytes, str]], clients: int, seconds: float
) -> float:
    """Rate of 200 answers to closed-loop clients (each sends its next request when the last is answered).

    After a refusal (503) a client pauses 0.1 s. Closed-loop clients fall into step (all answered together, all
    decoding together while the model waits), so this rate is below what the server sustains: see
    :func:`_calibrate`.
    """
    done: list[int] = []
    async with httpx.AsyncClient(base_url=base, timeout=REQUEST_TIMEOUT_S) as client:
        await _post(client, bodies[0])  # warm-up
        deadline = time.perf_counter() + seconds

        async def one(k: int) -> None:
            while time.perf_counter() < deadline:
                status, _, _ = await _post(client, bodies[k % len(bodies)])
                done.append(status)
                k += clients
                if status != 200:
                    await asyncio.sleep(0.1)

        start = time.perf_counter()
        await asyncio.gather(*(one(k) for k in range(clients)))
        elapsed = time.perf_counter() - start
    ok = sum(1 for s in done if s == 200)
    if ok == 0:
        raise RuntimeError(f"no request was answered 200 while calibrating (answers: {sorted(set(done))})")
    return ok / elapsed


async def _calibrate(base: str, bodies: list[tuple[bytes, str]], clients: int, seconds: float,
                     max_requests: int) -> tuple[float, float]:  # fmt: skip
    """The sustainable load, requests/s: the rate of 200 answers under open-loop arrivals at 3x the closed-loop rate.

    The server (this checkout's code, which refuses the excess cheaply) is then busy all the time, so its rate of
    200 answers is what it sustains. Returns (sustainable rate, closed-loop rate).
    """
    closed = await _closed_loop_rate(base, bodies, clients, seconds / 3)
    results, start = await _open_loop(base, bodies, 3 * closed, seconds, max_requests, seed=0)
    return _in_window(results, start, seconds) / seconds, closed


def _in_window(results: list[tuple[int, float, float]], start: float, seconds: float) -> int:
    """200 answers that arrived while requests were being sent: the throughput of the loaded server."""
    return sum(1 for status, _, end in results if status == 200 and end <= start + seconds)


async def _open_loop(
    base: str, bodies: list[tuple[bytes, str]], rate: float, seconds: float, max_requests: int, seed: int
) -> tuple[list[tuple[int, float, float]], float]:
    """Poisson arrivals at ``rate`` requests/s for ``seconds``; returns (results, start time)."""
    rng = np.random.default_rng(seed)
    limits = httpx.Limits(max_connections=max_requests, max_keepalive_connections=20)
    async with httpx.AsyncClient(base_url=base, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        tasks: list[asyncio.Task[tuple[int, float, float]]] = []
        start = time.perf_counter()
        due = start
        while len(tasks) < max_requests:
            due += rng.exponential(1.0 / rate)
            if due - start > seconds:
                break
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(_post(client, bodies[len(tasks) % len(bodies)])))
        results = await asyncio.gather(*tasks)
    return list(results), start


def _overload_rows(label: str, base: str, bodies: list[tuple[bytes, str]], rate: float, args: argparse.Namespace
                   ) -> list[str]:  # fmt: skip
    rows = []
    for m in args.multiples:
        results, start = asyncio.run(
            _open_loop(base, bodies, m * rate, args.seconds, args.max_requests, seed=int(m * 1000))
        )
        statuses = [r[0] for r in results]
        accepted = np.array([r[1] for r in results if r[0] == 200]) * 1000
        ok, busy = statuses.count(200), statuses.count(503)
        in_window = _in_window(results, start, args.seconds)
        p50 = f"{np.percentile(accepted, 50):.0f}" if ok else "-"
        p99 = f"{np.percentile(accepted, 99):.0f}" if ok else "-"
        rows.append(f"| {label} | {m:g}x | {m * rate * args.images:.1f} | {len(results)} | {ok} | {busy} | "
                    f"{len(statuses) - ok - busy} | {p50} | {p99} | {in_window * args.images / args.seconds:.1f} |")  # fmt: skip
        print(rows[-1], flush=True)
        time.sleep(2.0)  # let the server drain before the next load
    return rows


class _Server:
    """``frugalvision serve`` of the code in ``src`` in a subprocess on 127.0.0.1, stopped on exit."""

    def __init__(self, model: Path, src: Path, args: argparse.Namespace) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(src)}
        cmd = [sys.executable, "-c", "from frugalvision.cli.main import main; main()", "serve", str(model),
               "--host", "127.0.0.1", "--port", str(self.port), "--precision", args.precision,
               "--threads", str(args.threads), "--max-batch", str(args.max_batch),
               "--max-wait-ms", str(args.max_wait_ms), "--log-level", "error"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, env=env)

    def __enter__(self) -> _Server:
        try:
            _wait_healthy(self.base, self.proc)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)


def _overload(model: Path, args: argparse.Namespace) -> None:
    bodies = _multipart(_photos(), args.images, 8)
    runs = [("after", SRC)] + ([("before", args.before)] if args.before else [])
    rows: list[str] = []
    rate = 0.0
    for label, src in runs:
        with _Server(model, src, args) as server:
            if not rate:
                rate, closed = asyncio.run(_calibrate(server.base, bodies, args.calib_clients, args.calib_seconds,
                                                      args.max_requests))  # fmt: skip
                load = os.getloadavg()
                print(f"sustainable load ({label} code, open loop at 3x the rate of {args.calib_clients} "
                      f"closed-loop clients, {closed:.2f} requests/s): {rate:.2f} requests/s of {args.images} "
                      f"images = {rate * args.images:.1f} images/s; load average {load[0]:.2f}", flush=True)  # fmt: skip
                time.sleep(2.0)
            else:
                asyncio.run(_closed_loop_rate(server.base, bodies, 1, 2.0))  # warm-up only
            rows += _overload_rows(label, server.base, bodies, rate, args)
    print(f"\noverload: open-loop Poisson arrivals for {args.seconds:.0f} s per load, {args.images} photos per "
          f"request, server threads={args.threads}, max_batch={args.max_batch}; latency of accepted requests")  # fmt: skip
    print(
        "| code | load | offered images/s | requests | 200 | 503 | other | p50 ms | p99 ms | accepted images/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


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
    parser.add_argument("--overload", action="store_true", help="the overload scenario (see above)")
    parser.add_argument("--images", type=int, default=8, help="photos per request (--overload)")
    parser.add_argument("--multiples", type=float, nargs="+", default=[1.0, 2.0, 6.0],
                        help="loads, as multiples of the sustainable one (--overload)")  # fmt: skip
    parser.add_argument("--calib-clients", type=int, default=8, help="closed-loop clients measuring the "
                        "sustainable load (--overload)")  # fmt: skip
    parser.add_argument("--calib-seconds", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=400, help="most requests per load (--overload)")
    parser.add_argument("--before", type=Path, default=None,
                        help="src folder of another checkout to compare with, e.g. ../main/src (--overload)")  # fmt: skip
    args = parser.parse_args()
    if not 1 <= args.clients <= 256 or not 0 < args.seconds <= 600:
        parser.error("--clients must be in [1, 256] and --seconds in (0, 600]")
    if not 1 <= args.images <= 64 or not 1 <= args.max_requests <= 2000 or not 1 <= args.calib_clients <= 64:
        parser.error("--images must be in [1, 64], --max-requests in [1, 2000], --calib-clients in [1, 64]")
    if not all(0 < m <= 20 for m in args.multiples) or not 0 < args.calib_seconds <= 120:
        parser.error("--multiples must be in (0, 20] and --calib-seconds in (0, 120]")
    if args.before is not None and not (args.before / "frugalvision").is_dir():
        parser.error(f"--before {args.before}: no frugalvision package in it (give a checkout's src folder)")

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            print("exporting EfficientNet-Lite0 (offline weights) ...", flush=True)
            model = _export_lite0(Path(tmp) / "lite0-onnx")
            if args.precision == "int8":
                from frugalvision.deploy import quantize_int8

                calib = [Image.open(io.BytesIO(b)).convert("RGB") for b in _photos(64)]
                quantize_int8(model, calib, max_images=64, check_images=0)
        if args.overload:
            _overload(model, args)
            return
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
