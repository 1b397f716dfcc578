"""Wall time and test metrics of the default ``unetkit train``, repeated to quote a median.

python benchmarks/demo_train.py --repeats 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(workdir: Path) -> tuple[float, dict]:
    out = workdir / "run"
    started = time.perf_counter()
    command = [sys.executable, "-m", "unetkit", "train", "--no-progress", "--out", str(out)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    return seconds, json.loads((out / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    times, ious = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            seconds, metrics = run_once(Path(tmp))
        times.append(seconds)
        ious.append(metrics["mean_iou"])
        print(f"run: {seconds:.1f} s  test mean_iou {metrics['mean_iou']:.4f}", flush=True)
    print(
        json.dumps(
            {
                "median_seconds": round(statistics.median(times), 1),
                "median_test_mean_iou": round(statistics.median(ious), 4),
                "runs": len(times),
            }
        )
    )


if __name__ == "__main__":
    main()
