import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from moepipe.images import (
    ImageError,
    atomic_write,
    decode_rgb,
    grid,
    read_header,
    remove_partials,
    sniff_kind,
    write_json,
)


def _encode(fmt: str, size=(20, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 100, 50)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt, kind", [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp"), ("GIF", "gif")])
def test_kind_comes_from_magic_bytes(fmt, kind):
    data = _encode(fmt)
    assert sniff_kind(data[:16]) == kind
    header = read_header(data, max_pixels=10_000)
    assert (header.kind, header.width, header.height) == (kind, 20, 10)


def test_html_is_not_an_image():
    with pytest.raises(ImageError) as caught:
        read_header(b"<!doctype html><html>not a png</html>", 10_000)
    assert caught.value.reason == "not_image"


def _bomb_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_from_header():
    data = _bomb_png(30000, 30000)
    assert len(data) < 200
    with pytest.raises(ImageError) as caught:
        read_header(data, max_pixels=40_000_000)
    assert caught.value.reason == "too_many_pixels"


def test_truncated_file_reads_header_but_fails_decode():
    data = _encode("PNG", (64, 64))
    truncated = data[: len(data) // 2]
    assert read_header(truncated, 10_000).width == 64
    with pytest.raises(ImageError) as caught:
        decode_rgb(truncated)
    assert caught.value.reason == "corrupt"


def test_transparent_png_is_composited_on_white():
    buffer = io.BytesIO()
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(buffer, format="PNG")
    assert decode_rgb(buffer.getvalue()).getpixel((0, 0)) == (255, 255, 255)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out" / "a.bin"
    atomic_write(target, b"whole")
    assert target.read_bytes() == b"whole"

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", crash)
    with pytest.raises(OSError):
        atomic_write(tmp_path / "out" / "b.bin", b"x" * 100)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.bin"]
    (tmp_path / "out" / ".tmp-left").write_bytes(b"x")
    assert remove_partials(tmp_path / "out") == 1


def test_atomic_write_options(tmp_path, monkeypatch):
    synced, seen = [], []
    real_fsync, real_fdopen = os.fsync, os.fdopen
    monkeypatch.setattr("os.fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    atomic_write(tmp_path / "crop.png", b"fast", fsync=False)  # curate's crops: no fsync each
    assert (tmp_path / "crop.png").read_bytes() == b"fast" and synced == []

    class Spy(io.RawIOBase):  # records the file's permissions when the content is written
        def __init__(self, handle):
            self.handle = handle

        def fileno(self):
            return self.handle.fileno()

        def write(self, data):
            seen.append(os.fstat(self.fileno()).st_mode & 0o777)
            return self.handle.write(data)

        def close(self):
            self.handle.close()
            super().close()

    monkeypatch.setattr("os.fdopen", lambda fd, *args: Spy(real_fdopen(fd, *args)))
    atomic_write(tmp_path / "secret", b"key", mode=0o640)
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o640 and seen == [0o640]
    assert (tmp_path / "secret").read_bytes() == b"key" and len(synced) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crop.png", "secret"]


def test_write_json_is_indented_utf8_with_a_final_newline(tmp_path):
    write_json(tmp_path / "r" / "report.json", {"kept": 3, "tag": "猫耳"})
    text = (tmp_path / "r" / "report.json").read_bytes().decode("utf-8")
    assert text == json.dumps({"kept": 3, "tag": "猫耳"}, indent=2) + "\n"


def test_grid_lays_out_tiles_captions_and_headers():
    tiles = np.stack([np.full((8, 8, 3), 10 * i, np.uint8) for i in range(5)])
    plain = np.asarray(grid(tiles, 3))
    assert plain.shape == (2 * 8 + 2, 3 * 8 + 2 * 2, 3)  # 2 px gaps between tiles, none outside
    assert (plain[10:18, 10:18] == 40).all() and (plain[10:18, 20:28] == 255).all()  # tile 4, then white
    labelled = grid(tiles, 3, captions=["a", "b"], caption_width=30, headers=["x", "y", "z"])
    assert labelled.size == (30 + 28, 14 + 18)
    assert (np.asarray(labelled)[14:22, 30:38] == 0).all()
