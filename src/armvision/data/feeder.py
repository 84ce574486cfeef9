"""Training batches prepared on the device ahead of the step that uses them.

:class:`DeviceFeeder` wraps the loader's iterator. For each loader batch it calls ``prepare(batch, index)``
(the host-to-device copy, normalisation of 8-bit batches, or ``data.decode gpu``'s JPEG decode and crops)
on a CUDA stream of its own, in a background thread, while the training step of the previous batch runs
on the default stream; the step then waits on an event, not on the host. Two reasons for the thread:
torchvision's GPU JPEG decoder blocks the calling thread until its batch is decoded, and the loader's
``next()`` blocks while the workers catch up; neither should hold back the launch of the training step.

``index`` counts the loader batches from ``first_index`` (the run's position), so randomness drawn in
``prepare`` can be seeded per batch and does not depend on how far ahead the feeder runs (exact resume).
Without a thread (``thread=False``, the default off CUDA) it is a plain iterator: ``prepare`` runs in
``__next__``. A thread must not be used when the loader itself draws from this process's random state
(``num_workers=0``: the transforms run in the thread), or when ``prepare`` does: the draws would then
depend on timing, and a checkpoint would save a random state advanced by the batches prepared ahead.
Errors of the loader or of ``prepare`` are raised by ``__next__`` in the caller's thread, at the batch
where they happened. Call :meth:`close` (or use it as a context manager) to stop the thread.
"""

from __future__ import annotations

import queue
import threading
from contextlib import nullcontext
from typing import Any, Callable, Iterator

import torch

__all__ = ["DeviceFeeder", "copy_to_device"]

_END, _ITEM, _ERROR = "end", "item", "error"


def copy_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without waiting for the GPU: on CUDA through pinned memory, asynchronously (a
    blocking copy, or one from pageable memory, can synchronise the stream); elsewhere a plain copy."""
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors(x)


class DeviceFeeder:
    """Iterator of ``prepare(batch, index)`` over ``batches``, computed ``ahead`` batches in advance.

    Args:
        batches: the loader's iterator.
        prepare: ``(loader batch, index) -> anything``; tensors in it (top level, or in lists/tuples) are
            handed to the caller's CUDA stream safely (an event wait and ``record_stream``).
        device: the training device; a CUDA device gets a side stream.
        first_index: the index of the first batch.
        ahead: batches prepared and waiting (1 or more); about ``ahead + 1`` batches live on the device.
        thread: prepare in a background thread (default: on CUDA devices).
    """

    def __init__(self, batches: Iterator, prepare: Callable[[Any, int], Any], device: torch.device,
                 first_index: int = 0, ahead: int = 1, thread: bool | None = None):
        device = torch.device(device)
        self._cuda = device.type == "cuda"
        if self._cuda and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self._batches, self._prepare, self.device = batches, prepare, device
        self._index = int(first_index)
        self._stream = torch.cuda.Stream(self.device) if self._cuda else None
        self._done = False
        self._thread = None
        if thread if thread is not None else self._cuda:
            self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(ahead)))
            self._closed = threading.Event()
            self._thread = threading.Thread(target=self._run, name="armvision-feeder", daemon=True)
            self._thread.start()

    # -- the background thread ------------------------------------------------------------------
    def _prepared(self, batch: Any) -> tuple[Any, Any]:
        with torch.cuda.stream(self._stream) if self._stream is not None else nullcontext():
            out = self._prepare(batch, self._index)
            event = None
            if self._stream is not None:
                event = torch.cuda.Event()
                event.record(self._stream)
        self._index += 1
        return out, event

    def _put(self, item) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            if self._cuda:
                torch.cuda.set_device(self.device)
            for batch in self._batches:
                if self._closed.is_set():
                    return
                if not self._put((_ITEM, *self._prepared(batch))):
                    return
            self._put((_END, None, None))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread, raised there
            self._put((_ERROR, e, None))

    # -- the caller's side ---------------------------------------------------------------------
    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        if self._thread is None:
            try:
                batch = next(self._batches)
            except StopIteration:
                self._done = True
                raise
            out, event = self._prepared(batch)
        else:
            while True:
                try:
                    kind, out, event = self._queue.get(timeout=1.0)
                    break
                except queue.Empty:
                    if not self._thread.is_alive():
                        self._done = True
                        raise RuntimeError("the batch feeder thread stopped without a result") from None
            if kind == _END:
                self._done = True
                raise StopIteration
            if kind == _ERROR:
                self._done = True
                raise out
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for t in _tensors(out):
                if t.device.type == "cuda":
                    t.record_stream(current)  # the allocator reuses its memory only after the step used it
        return out

    def close(self) -> None:
        """Stop the background thread (its prepared batches are dropped) and release the loader iterator."""
        self._done = True
        if self._thread is not None:
            self._closed.set()
            while True:  # unblock a put
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._thread.join(timeout=30)
        self._batches = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
