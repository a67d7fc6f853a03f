"""Checks on media files shared by the tests: ffmpeg probes, audio length, MP4 box order.

They run the standalone ffmpeg program (imageio-ffmpeg's, a test dependency), not the PyAV code
under test: an independent tool that must agree with what ``flexavatar.video`` wrote.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

from imageio_ffmpeg import get_ffmpeg_exe as ffmpeg_exe


def ffmpeg(*args: str) -> None:
    """Run the bundled ffmpeg quietly (test media generation); fail loudly on errors."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]
    subprocess.run(cmd, check=True, timeout=60, capture_output=True)


def ffmpeg_info(path: Path) -> str:
    """``ffmpeg -i`` stderr: stream descriptions (codec, pixel format, size)."""
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True, timeout=60
    )
    return proc.stderr


def audio_seconds(path: Path, rate: int = 48000) -> float:
    """Duration of the first audio stream, by decoding it to mono s16 PCM and counting samples."""
    cmd = [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", str(path), "-map", "0:a:0"]
    cmd += ["-ac", "1", "-ar", str(rate), "-f", "s16le", "pipe:1"]
    pcm = subprocess.run(cmd, check=True, capture_output=True, timeout=60).stdout
    return len(pcm) / 2 / rate


def top_level_boxes(path: Path) -> list[str]:
    """Types of the top-level ISO-BMFF boxes in file order (4-byte size + 4-byte type each)."""
    boxes = []
    data = path.read_bytes()
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:  # 64-bit "largesize" follows the type
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        elif size == 0:  # box extends to the end of the file
            size = len(data) - pos
        assert size >= 8, f"corrupt box at offset {pos}"
        boxes.append(kind.decode("latin-1"))
        pos += size
    assert pos == len(data), "boxes do not tile the file"
    return boxes


def assert_faststart(path: Path) -> None:
    boxes = top_level_boxes(path)
    assert "moov" in boxes and "mdat" in boxes, boxes
    assert boxes.index("moov") < boxes.index("mdat"), f"moov after mdat: {boxes}"
