"""Soak the Space: many sequential ``/generate`` requests against a real ``python app.py``.

``python -m flexavatar bench soak [--requests 50 --frames 8 --max-seconds 1]`` starts the app
on a free localhost port (its own temp folders), sends the requests one after another through
``gradio_client`` and prints the server's resident memory and the files it keeps (request
folders, Gradio's cache) after request 1, 10, 20, ..., N. Flat RSS and bounded folders are
what a long-running Space needs.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "examples" / "astronaut.png"
DRIVING = REPO / "examples" / "driving.mp4"


def process_rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for process {pid}")


def folder_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(work: Path, port: int) -> subprocess.Popen:
    """``python app.py`` with its request folders and Gradio cache under ``work``."""
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
               FLEXAVATAR_APP_TMP=str(work / "requests"), GRADIO_TEMP_DIR=str(work / "gradio"),
               GRADIO_ANALYTICS_ENABLED="False")  # fmt: skip
    log = open(work / "server.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def connect(url: str, server: subprocess.Popen, timeout_s: float = 600):
    from gradio_client import Client

    deadline = time.monotonic() + timeout_s
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the app exited with {server.returncode} before serving")
        try:
            return Client(url, verbose=False)
        except Exception:  # not up yet
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def soak(requests: int, frames: int, max_seconds: float) -> list[dict]:
    """Run the soak; returns one row per reported request."""
    from gradio_client import handle_file

    report_at = sorted({1, requests, *range(10, requests + 1, 10)})
    rows = []
    with tempfile.TemporaryDirectory(prefix="flexavatar-soak-") as folder:
        work = Path(folder)
        port = free_port()
        server = start_app(work, port)
        try:
            client = connect(f"http://127.0.0.1:{port}/", server)
            start_rss = process_rss_mb(server.pid)
            print(f"server up: RSS {start_rss:.0f} MiB (after its warm start)", flush=True)
            for index in range(1, requests + 1):
                started = time.perf_counter()
                client.predict(photos=[handle_file(str(PHOTO))], driving_video=handle_file(str(DRIVING)),
                               turntable_frames=frames, max_seconds=max_seconds, api_name="/generate")  # fmt: skip
                if index in report_at:
                    row = dict(request=index, seconds=time.perf_counter() - started, rss_mb=process_rss_mb(server.pid),
                               request_folders=len(list((work / "requests").glob("req-*"))),
                               gradio_files=folder_files(work / "gradio"))  # fmt: skip
                    rows.append(row)
                    print(f"request {index:3d}: {row['seconds']:5.1f} s  server RSS {row['rss_mb']:7.1f} MiB  "
                          f"request folders {row['request_folders']:3d}  Gradio cache files {row['gradio_files']:4d}",
                          flush=True)  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=60)
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        per_request = (last["rss_mb"] - first["rss_mb"]) / max(1, last["request"] - first["request"])
        print(f"RSS growth after request 1: {last['rss_mb'] - first['rss_mb']:+.1f} MiB over "
              f"{last['request'] - first['request']} requests ({per_request:+.2f} MiB/request)")  # fmt: skip
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m flexavatar bench soak", description=__doc__)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--frames", type=int, default=8, help="turntable frames per request")
    parser.add_argument("--max-seconds", type=float, default=1.0, help="seconds of the example driving clip")
    args = parser.parse_args(argv)
    soak(args.requests, args.frames, args.max_seconds)
