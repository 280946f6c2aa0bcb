"""Clustering in a helper process, so that it never freezes the viewer.

``mwatershed.agglom`` (Rust) holds Python's global interpreter lock for its whole run: about
0.25 s for a 256² preview on a busy CPU, so in any thread of napari's process it stalls the event
loop just as long. One long-lived helper process clusters instead, and the worker thread only
waits on a pipe, which releases the lock.

The helper is a plain ``python -m napari_spoco.widgets.clustering_process`` child speaking
length-prefixed pickles over its stdin/stdout (both ends are this package). ``multiprocessing``
is not used on purpose: its spawn and forkserver modes re-import the parent's ``__main__``, which
for the common unguarded napari script (``viewer = napari.Viewer(); napari.run()``) would open a
second viewer in the child.

Arrays above :data:`MAX_BYTES` are clustered in the calling thread, where copying them to another
process would cost more memory than the stall is worth; so is everything when the helper cannot
start or dies.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading

import numpy as np

logger = logging.getLogger(__name__)

#: Largest embedding array sent to the helper process (bigger ones are clustered in-thread).
MAX_BYTES = 512 * 2**20
_HEADER = struct.Struct("<Q")


def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream):
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("the clustering process closed its pipe")
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the clustering process closed its pipe")
    return pickle.loads(data)  # noqa: S301 (both ends of the pipe are this module)


class ClusteringProcess:
    """A child process running ``core.clustering.segment``, one request at a time."""

    def __init__(self):
        self._process = None
        self._lock = threading.Lock()

    def _ensure(self):
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._process = subprocess.Popen(
            [sys.executable, "-m", "napari_spoco.widgets.clustering_process"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        return self._process

    def start(self) -> None:
        """Start the child and let it import the clustering code (returns at once)."""
        with self._lock:
            self._ensure()

    def segment(self, embeddings, method, params):
        """``segment(embeddings, method, **params)`` in the child; its errors are re-raised."""
        with self._lock:
            process = self._ensure()
            try:
                _send(process.stdin, (embeddings, method, params))
                status, value = _receive(process.stdout)
            except (OSError, EOFError, pickle.PickleError):
                self._kill()
                raise
        if status == "error":
            raise value
        return value

    def _kill(self):
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        for pipe in (process.stdin, process.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        process.wait(timeout=5)

    def close(self) -> None:
        """End the child (it also ends by itself when this process exits: its stdin closes)."""
        with self._lock:
            self._kill()


_helper = ClusteringProcess()
atexit.register(_helper.close)


def stop() -> None:
    """End the helper process (the dock's ``shutdown``); the next request starts a new one."""
    _helper.close()


def warm_up() -> None:
    """Start the helper process now (e.g. when the widget opens)."""
    try:
        _helper.start()
    except OSError as err:
        logger.warning("napari-spoco: no clustering process (%s); clustering in-thread", err)


def segment_off_thread(embeddings: np.ndarray, method: str = "mws", **params) -> np.ndarray:
    """``core.clustering.segment`` in the helper process (in-thread for huge arrays or when the
    helper is unavailable). Errors of ``segment`` (``SpocoInputError``) are re-raised."""
    from napari_spoco.core.clustering import segment

    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if embeddings.nbytes > MAX_BYTES:
        return segment(embeddings, method=method, **params)
    try:
        return _helper.segment(embeddings, method, params)
    except (OSError, EOFError, pickle.PickleError) as err:
        logger.warning("napari-spoco: clustering process failed (%s); clustering in-thread", err)
        return segment(embeddings, method=method, **params)


def serve(stdin=None, stdout=None) -> None:
    """The child's loop: read a request, cluster, answer; end when the parent closes stdin."""
    if stdout is None:
        # The protocol owns the real stdout; anything a library prints goes to stderr.
        stdout = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)
    stdin = stdin or sys.stdin.buffer
    from napari_spoco.core.clustering import segment

    while True:
        try:
            embeddings, method, params = _receive(stdin)
        except EOFError:
            return
        try:
            answer = ("ok", segment(embeddings, method=method, **params))
        except Exception as err:  # sent back and re-raised in the parent
            answer = ("error", err)
        _send(stdout, answer)


if __name__ == "__main__":
    serve()
