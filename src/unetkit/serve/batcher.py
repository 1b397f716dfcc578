"""One worker thread owns the model: concurrent requests queue up and are answered in batches.

A PyTorch model (and the Segmenter around it) is not meant to be called from many threads at
once, and the web server answers requests on a thread pool. So every prediction goes through one
worker thread. Requests that arrive while the model is busy are not answered one by one: the
worker takes up to ``batch_size`` waiting images and runs them as one batch, which is what makes
a busy service fast. Each request gets the mask of its own image whatever batch it was part of.

If a batch fails, its images are retried one at a time, so an image the model cannot take fails
only its own request. A request that gave up waiting (its future cancelled, e.g. by the service's
request timeout) is dropped from the queue unpredicted, so an overloaded service does not spend
the model on answers nobody reads.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

PredictBatch = Callable[[list[np.ndarray]], list[np.ndarray]]


@dataclass
class _Job:
    image: np.ndarray
    result: Future[np.ndarray] = field(default_factory=Future)


_STOP = None


class BatchingPredictor:
    """Runs ``predict_batch`` (e.g. ``Segmenter.predict`` on a list) on one worker thread.

    The thread starts with the first :meth:`submit` (or :meth:`start`) and ends with
    :meth:`close`; as a context manager it is closed on exit.
    """

    def __init__(self, predict_batch: PredictBatch, batch_size: int) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        self.predict_batch = predict_batch
        self.batch_size = batch_size
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()  # guards starting and stopping the worker

    def start(self) -> None:
        """Start the worker thread; :meth:`submit` also starts it when it is not running."""
        with self._lock:
            self._start_unlocked()

    def close(self) -> None:
        """Answer what is queued, then stop the worker thread."""
        with self._lock:  # held until the worker ends, so no second worker overlaps it
            if self._worker is None:
                return
            self._jobs.put(_STOP)
            self._worker.join()
            self._worker = None

    def __enter__(self) -> BatchingPredictor:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def submit(self, image: np.ndarray) -> Future[np.ndarray]:
        """The future mask of ``image``; its exception is the one predicting it raised."""
        job = _Job(image)
        with self._lock:
            self._start_unlocked()
            self._jobs.put(job)
        return job.result

    def _start_unlocked(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="unetkit-predict", daemon=True)
            self._worker.start()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._jobs.get()
            if first is _STOP:
                return
            batch = [first] if _still_wanted(first) else []
            while len(batch) < self.batch_size and not stopping:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stopping = True
                elif _still_wanted(job):
                    batch.append(job)
            if batch:
                self._answer(batch)

    def _answer(self, batch: list[_Job]) -> None:
        try:
            masks = list(self.predict_batch([job.image for job in batch]))
            if len(masks) != len(batch):
                raise RuntimeError(f"{len(batch)} images gave {len(masks)} masks")
        except Exception as error:
            if len(batch) == 1:
                batch[0].result.set_exception(error)
            else:
                for job in batch:
                    self._answer([job])
            return
        for job, mask in zip(batch, masks, strict=True):
            job.result.set_result(mask)


def _still_wanted(job: _Job) -> bool:
    """Mark ``job`` running, or False when its request was cancelled while it waited."""
    return job.result.set_running_or_notify_cancel()
