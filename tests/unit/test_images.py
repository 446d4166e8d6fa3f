import io
import struct
import zlib

import pytest
from PIL import Image

from moepipe.images import ImageError, atomic_write, decode_rgb, read_header, remove_partials, sniff_kind


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
