"""`unetkit serve` under load: many concurrent clients, latency percentiles, failures and memory.

    python benchmarks/serve_load.py --clients 100 --requests 10 --size 512

Builds a small U-Net with random weights (speed does not depend on them), saves it with the
project's checkpoint writer, starts `python -m unetkit serve` on 127.0.0.1 in a subprocess with
its default limits (unless --max-queue / --request-timeout are given), and sends `--clients`
concurrent clients of `--requests` sequential `POST /predict` each, a `--size` x `--size` PNG of
the synthetic demo data (one keep-alive connection per client, on a thread pool, with the standard
library's http.client).

A 503 with `Retry-After` is the server's deliberate overload answer: the client waits as it says
and sends the request again (up to --max-retries times), and the table counts those answers. A
request fails when its last answer is not 200, or on a connection error. Latency is per request,
from its first attempt to its 200, waits included. The server's resident memory (VmRSS from
/proc/PID/status) is read once it answers /health, after a few warm-up requests, at its peak
during the load (sampled every 0.1 s) and 3 s after the load.
"""

from __future__ import annotations

import argparse
import http.client
import io
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from unetkit.checkpoint import Preprocessing, model_metadata, save_checkpoint
from unetkit.data.datasets.synthetic import SyntheticSource
from unetkit.data.preprocess import default_mean_std
from unetkit.models import build_model
from unetkit.tasks import Task

HOST = "127.0.0.1"


def write_checkpoint(path: Path, img_size: int, base_width: int, depth: int) -> None:
    """A random-weight binary U-Net checkpoint, as `unetkit train` lays it out."""
    task = Task(2)
    options = {"base_width": base_width, "depth": depth}
    model = build_model("unet", 3, task.out_channels, **options)
    mean, std = default_mean_std(3)
    prep = Preprocessing((img_size, img_size), tuple(mean), tuple(std), 3)
    metadata = model_metadata("unet", options, task, ["background", "foreground"], prep)
    save_checkpoint({**metadata, "model": model.state_dict(), "epoch": 0}, path)


def upload_body(size: int) -> tuple[bytes, str]:
    """A multipart body with one synthetic ``size`` x ``size`` PNG, and its Content-Type."""
    image, _ = SyntheticSource(1, (size, size), num_classes=2, seed=1).load(0)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        f"Content-Type: image/png\r\n\r\n"
    ).encode()
    body = head + buffer.getvalue() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def rss_mb(pid: int) -> float:
    """The resident memory of process ``pid`` in MB (2**20 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def wait_for_health(port: int, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}; see its log")
        try:
            connection = http.client.HTTPConnection(HOST, port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not answer /health within {timeout_s} s")


@dataclass
class Tally:
    """What the clients saw, added to under a lock."""

    latencies_s: list[float] = field(default_factory=list)
    busy: int = 0  # 503 "the server is busy" answers, retried
    timed_out: int = 0  # 503 "not answered within" answers, retried
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def one_request(
    connection: http.client.HTTPConnection, body: bytes, content_type: str
) -> tuple[int, bytes, str | None]:
    connection.request("POST", "/predict", body, {"Content-Type": content_type})
    answer = connection.getresponse()
    return answer.status, answer.read(), answer.getheader("Retry-After")


def client(
    port: int, requests: int, body: bytes, content_type: str, retries: int, tally: Tally
) -> None:
    """``requests`` sequential predictions on one keep-alive connection, honouring Retry-After."""
    connection = http.client.HTTPConnection(HOST, port, timeout=300)
    for _ in range(requests):
        started = time.perf_counter()
        for _attempt in range(retries + 1):
            try:
                status, answer, retry_after = one_request(connection, body, content_type)
            except (OSError, http.client.HTTPException) as error:
                with tally.lock:
                    tally.failures.append(f"{type(error).__name__}: {error}")
                connection.close()
                connection = http.client.HTTPConnection(HOST, port, timeout=300)
                break
            if status == 503 and retry_after is not None:
                with tally.lock:
                    if b"not answered within" in answer:
                        tally.timed_out += 1
                    else:
                        tally.busy += 1
                time.sleep(float(retry_after))
                continue
            with tally.lock:
                if status == 200:
                    tally.latencies_s.append(time.perf_counter() - started)
                else:
                    tally.failures.append(f"HTTP {status}: {answer[:200]!r}")
            break
        else:
            with tally.lock:
                tally.failures.append(f"still 503 after {retries} retries")
    connection.close()


class PeakRss:
    """Samples the server's VmRSS on a thread until stopped; ``peak_mb`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_mb = rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self.peak_mb = max(self.peak_mb, rss_mb(self.pid))


def serve_command(args: argparse.Namespace, checkpoint: Path, port: int) -> list[str]:
    command = [sys.executable, "-m", "unetkit", "serve", "--checkpoint", str(checkpoint)]
    command += ["--host", HOST, "--port", str(port), "--device", "cpu"]
    command += ["--batch-size", str(args.batch_size)]
    if args.max_queue is not None:
        command += ["--max-queue", str(args.max_queue)]
    if args.request_timeout is not None:
        command += ["--request-timeout", str(args.request_timeout)]
    return command


def run(args: argparse.Namespace, folder: Path) -> dict[str, object]:
    checkpoint = folder / "best.pt"
    write_checkpoint(checkpoint, args.img_size, args.base_width, args.depth)
    body, content_type = upload_body(args.size)
    port = free_port()
    log_path = folder / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(serve_command(args, checkpoint, port), stdout=log, stderr=log)
    try:
        wait_for_health(port, server)
        figures: dict[str, object] = {"rss_start_mb": rss_mb(server.pid)}
        warm_up = Tally()
        client(port, args.warmup, body, content_type, 0, warm_up)
        assert not warm_up.failures, warm_up.failures
        figures["rss_warm_mb"] = rss_mb(server.pid)
        tally = Tally()
        with PeakRss(server.pid) as peak, ThreadPoolExecutor(args.clients) as pool:
            started = time.perf_counter()
            jobs = [
                pool.submit(
                    client, port, args.requests, body, content_type, args.max_retries, tally
                )
                for _ in range(args.clients)
            ]
            for job in jobs:
                job.result()
            wall_s = time.perf_counter() - started
        time.sleep(3)
        figures["rss_after_mb"] = rss_mb(server.pid)
        figures["rss_peak_mb"] = peak.peak_mb
        wait_for_health(port, server, timeout_s=10)
    finally:
        server.terminate()
        server.wait(60)
    log_text = log_path.read_text(errors="replace")
    latencies = np.array(tally.latencies_s) * 1000
    return {
        **figures,
        "requests": args.clients * args.requests,
        "succeeded": len(tally.latencies_s),
        "failed": len(tally.failures),
        "failure_examples": sorted(set(tally.failures))[:5],
        "busy_503": tally.busy,
        "timeout_503": tally.timed_out,
        "wall_s": wall_s,
        "images_per_s": len(tally.latencies_s) / wall_s,
        "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else float("nan"),
        "p95_ms": float(np.percentile(latencies, 95)) if latencies.size else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) if latencies.size else float("nan"),
        "server_tracebacks": log_text.count("Traceback"),
        "upload_kb": len(body) / 1024,
    }


def table(figures: dict[str, object], args: argparse.Namespace) -> str:
    rows = [
        ("requests", f"{figures['requests']} ({args.clients} clients x {args.requests})"),
        ("succeeded", figures["succeeded"]),
        ("failed (not 200 in the end, or a connection error)", figures["failed"]),
        ("503 busy answers (queue full), retried after Retry-After", figures["busy_503"]),
        ("503 timeout answers, retried after Retry-After", figures["timeout_503"]),
        (
            "latency p50 / p95 / p99 (ms, waits included)",
            "{p50_ms:.0f} / {p95_ms:.0f} / {p99_ms:.0f}".format(**figures),
        ),
        ("images/s", f"{figures['images_per_s']:.1f} ({figures['wall_s']:.1f} s wall)"),
        (
            "server RSS at start / after warm-up (MB)",
            "{rss_start_mb:.0f} / {rss_warm_mb:.0f}".format(**figures),
        ),
        (
            "server RSS peak / 3 s after the load (MB)",
            "{rss_peak_mb:.0f} / {rss_after_mb:.0f}".format(**figures),
        ),
        ("RSS after minus start (MB)", f"{figures['rss_after_mb'] - figures['rss_start_mb']:+.0f}"),
        ("tracebacks in the server log", figures["server_tracebacks"]),
        ("upload size (kB)", f"{figures['upload_kb']:.0f}"),
    ]
    lines = ["| figure | value |", "| --- | --- |"] + [
        f"| {name} | {value} |" for name, value in rows
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--requests", type=int, default=10, help="sequential requests per client")
    parser.add_argument("--size", type=int, default=512, help="side of the uploaded image")
    parser.add_argument("--img-size", type=int, default=128, help="the model's input side")
    parser.add_argument("--base-width", type=int, default=8)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8, help="serve --batch-size")
    parser.add_argument("--max-queue", type=int, help="serve --max-queue (default: serve's)")
    parser.add_argument(
        "--request-timeout", type=float, help="serve --request-timeout (default: serve's)"
    )
    parser.add_argument("--max-retries", type=int, default=100, help="per request, on 503")
    parser.add_argument("--warmup", type=int, default=5, help="sequential requests first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve-load-") as folder:
        figures = run(args, Path(folder))
    print(table(figures, args))
    if figures["failure_examples"]:
        print("\nfailures, e.g.:", *figures["failure_examples"], sep="\n  ")


if __name__ == "__main__":
    main()
