"""A Python client for the Space's ``/live`` streaming endpoint that speaks Gradio's streaming
protocol as the browser does (no gradio import: plain HTTP with httpx).

``POST /gradio_api/queue/join`` with the first camera frame (a JPEG data URL, as the webcam
sends it) opens the stream event; each later frame is ``POST /gradio_api/stream/{event_id}``;
outputs arrive on the session's event stream (``GET /gradio_api/queue/data``) as
``process_streaming`` messages; ``POST /gradio_api/stream/{event_id}/close`` ends it. Used by
``bench live --app`` and the tests.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import uuid

import httpx
import numpy as np
from PIL import Image

JPEG_QUALITY = 90


def jpeg_bytes(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def as_sent(frame: np.ndarray) -> np.ndarray:
    """``frame`` as the server receives it (JPEG-compressed and decoded)."""
    return np.asarray(Image.open(io.BytesIO(jpeg_bytes(frame))).convert("RGB"))


def frame_payload(frame: np.ndarray) -> dict:
    """A camera frame as the browser's webcam sends it while streaming: a JPEG data URL."""
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(frame)).decode()
    return {"url": url, "is_stream": False, "meta": {"_type": "gradio.FileData"}}


class LiveStream:
    """One browser tab streaming its camera to ``/live`` (see the module docstring)."""

    def __init__(self, app_url: str):
        self.base = app_url.rstrip("/") + "/gradio_api"
        config = httpx.get(app_url.rstrip("/") + "/config", timeout=30).json()
        self.fn_index = next(i for i, d in enumerate(config["dependencies"]) if d.get("api_name") == "live")
        self.dependency = config["dependencies"][self.fn_index]
        self.session = uuid.uuid4().hex[:12]
        self.http = httpx.Client(timeout=120)
        self.event_id: str | None = None
        self.sent: list[float] = []  # time.perf_counter() of each frame sent
        self.outputs: list[tuple[float, str, str]] = []  # (arrival time, image url, stats markdown)
        self.started = threading.Event()  # process_starts seen
        self.completed = threading.Event()
        self.got_output = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)

    def body(self, frame: np.ndarray) -> dict:
        return {"data": [frame_payload(frame), None, None], "fn_index": self.fn_index, "event_data": None,
                "trigger_id": self.dependency["targets"][0][0], "session_hash": self.session}  # fmt: skip

    def open(self, first_frame: np.ndarray) -> None:
        self.sent.append(time.perf_counter())
        reply = self.http.post(self.base + "/queue/join", json=self.body(first_frame))
        reply.raise_for_status()
        self.event_id = reply.json()["event_id"]
        self.reader.start()

    def _read(self) -> None:
        with self.http.stream("GET", self.base + f"/queue/data?session_hash={self.session}") as response:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                kind = message.get("msg")
                if kind == "process_starts":
                    self.started.set()
                elif kind == "process_streaming":
                    image, stats = message["output"]["data"][:2]
                    with self.got_output:
                        self.outputs.append((time.perf_counter(), image and image["url"], stats))
                        self.got_output.notify_all()
                elif kind == "process_completed":
                    self.completed.set()
                    with self.got_output:
                        self.got_output.notify_all()
                    return

    def send(self, frame: np.ndarray) -> None:
        self.sent.append(time.perf_counter())
        self.http.post(self.base + f"/stream/{self.event_id}", json=self.body(frame)).raise_for_status()

    def wait_outputs(self, count: int, timeout: float = 60) -> None:
        with self.got_output:
            ok = self.got_output.wait_for(lambda: len(self.outputs) >= count or self.completed.is_set(), timeout)
        if not (ok and len(self.outputs) >= count):
            raise TimeoutError(f"only {len(self.outputs)} of {count} outputs arrived")

    def close(self) -> None:
        if self.event_id is not None:
            self.http.post(self.base + f"/stream/{self.event_id}/close")
        self.completed.wait(30)

    def image(self, index: int) -> np.ndarray:
        """The ``index``-th avatar frame that came back, [H,W,3] uint8."""
        content = self.http.get(self.outputs[index][1]).content
        return np.asarray(Image.open(io.BytesIO(content)).convert("RGB"))
