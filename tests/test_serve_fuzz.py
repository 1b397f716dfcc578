"""Bad input, generated: whatever arrives at the upload route, the answer is a 4xx with a message.

Hand-made cases (malformed multipart, wrong content types, truncated and oversized images, headers
that claim absurd sizes) and Hypothesis-generated ones (random bytes, mutated images, random PNG
headers, random multipart envelopes) go to one server over real HTTP; the image decoder gets the
same bytes directly. Afterwards the server is still healthy and still predicts a valid image.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Callable, Iterator
from http import HTTPStatus
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model_helpers import rgb
from PIL import Image
from test_inference import write_checkpoint
from test_serve import (
    Answer,
    decoded_png,
    expected_mask,
    get_json,
    multipart,
    png_file,
    request,
    serving,
    upload,
)

from unetkit.inference.segmenter import Segmenter
from unetkit.serve.decode import UploadError, decode_image

pytestmark = pytest.mark.usefixtures("one_thread")

LIMIT_BYTES = 64 * 1024
LIMIT_PIXELS = 10_000  # 100 x 100
FUZZ = settings(
    max_examples=50,
    deadline=None,
    database=None,  # no .hypothesis folder in the checkout
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve-fuzz") / "best.pt"
    write_checkpoint(path, 3)
    return path


@pytest.fixture(scope="module")
def url(checkpoint: Path) -> Iterator[str]:
    limits = {"max_upload_mb": LIMIT_BYTES / 2**20, "max_megapixels": LIMIT_PIXELS / 1e6}
    with serving(checkpoint, **limits) as base:
        yield base


def assert_refused(answer: Answer, *statuses: int) -> str:
    """A 4xx (one of ``statuses`` when given) with a JSON ``{"detail": "..."}``; the detail."""
    status, headers, body = answer
    assert 400 <= status < 500, (status, body[:300])
    assert not statuses or status in statuses, (status, body[:300])
    assert headers["Content-Type"] == "application/json"
    message = json.loads(body)["detail"]
    assert isinstance(message, str) and len(message) > 20, message
    return message


def assert_answered(answer: Answer) -> None:
    """A mask (a file that still decodes) or a 4xx refusal with a message: never a 5xx."""
    if answer[0] == 200:
        assert answer[1]["Content-Type"] == "image/png"
        decoded_png(answer[2])
    else:
        assert_refused(answer)


# --- files that claim more than they are -------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(
    width: int, height: int, depth: int = 8, colour: int = 2, idat: bytes = b""
) -> bytes:
    """A PNG whose IHDR (with a valid CRC) claims ``width x height``, with ``idat`` as its data."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    chunks = png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def saved(picture: np.ndarray, format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format=format)
    return buffer.getvalue()


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def jpeg_claiming(width: int, height: int) -> bytes:
    data = saved(rgb(8, 8), "JPEG")
    sof = data.index(b"\xff\xc0")  # then length (2 bytes), precision (1), height (2), width (2)
    return patched(data, sof + 5, struct.pack(">HH", height, width))


def gif_claiming(width: int, height: int) -> bytes:
    data = saved(rgb(8, 8)[..., 0], "GIF")
    return patched(data, 6, struct.pack("<HH", width, height))  # the logical screen


def bmp_claiming(width: int, height: int) -> bytes:
    return patched(saved(rgb(8, 8), "BMP"), 18, struct.pack("<ii", width, height))


def tiff_claiming(width: int, height: int) -> bytes:
    """A minimal little-endian grey TIFF whose tags claim ``width x height``, with 8 data bytes."""
    tags = [  # (tag, type, value): type 3 SHORT, 4 LONG
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 0),  # the strip's offset, set below: after the IFD
        (277, 3, 1),
        (278, 4, height),
        (279, 4, 8),
    ]
    strip_offset = 8 + 2 + 12 * len(tags) + 4
    ifd = struct.pack("<H", len(tags))
    for tag, kind, value in tags:
        value = strip_offset if tag == 273 else value
        field = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        ifd += struct.pack("<HHI", tag, kind, 1) + field
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + bytes(8)


ABSURD = 100_000
CLAIMS: dict[str, Callable[[int, int], bytes]] = {
    "png": png_claiming,
    "jpeg": lambda w, h: jpeg_claiming(min(w, 65535), min(h, 65535)),
    "gif": lambda w, h: gif_claiming(min(w, 65535), min(h, 65535)),
    "bmp": bmp_claiming,
    "tiff": tiff_claiming,
}


@pytest.mark.parametrize("kind", list(CLAIMS))
def test_a_header_claiming_an_absurd_size_is_413_before_decoding(url, kind):
    data = CLAIMS[kind](ABSURD, ABSURD)
    assert len(data) < 1000
    message = assert_refused(upload(url, data), HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    assert "too large" in message or "more than the service's limit" in message
    with pytest.raises(UploadError) as error:
        decode_image(data, 3, LIMIT_PIXELS)
    assert error.value.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE


# --- hand-made bad requests ---------------------------------------------------------------------


VALID = png_file(rgb(30, 40, seed=3))
PART = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'


def raw(body: bytes, content_type: str | None) -> tuple[bytes, dict[str, str]]:
    return body, {} if content_type is None else {"Content-Type": content_type}


REQUESTS: dict[str, tuple[Callable[[], tuple[bytes, dict[str, str]]], tuple[int, ...]]] = {
    "multipart-without-boundary": (
        lambda: raw(multipart(VALID)[0], "multipart/form-data"),
        (400,),
    ),
    "boundary-not-in-body": (
        lambda: raw(multipart(VALID)[0], "multipart/form-data; boundary=elsewhere"),
        (400, 422),
    ),
    "no-closing-boundary": (
        lambda: raw(PART + VALID, "multipart/form-data; boundary=b"),
        (400, 422),
    ),
    "cut-inside-part-headers": (
        lambda: raw(PART[:30], "multipart/form-data; boundary=b"),
        (400, 422),
    ),
    "part-without-a-name": (
        lambda: raw(
            b'--b\r\nContent-Disposition: form-data; filename="a.png"\r\n\r\n'
            + VALID
            + b"\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
        ),
        (400,),
    ),
    "part-headers-of-junk": (
        lambda: raw(
            b"--b\r\n\x00\xff\xfe garbage\r\n\r\n" + VALID + b"\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
        ),
        (400, 422),
    ),
    "file-sent-as-a-text-field": (
        lambda: raw(
            b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nhello\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
        ),
        (422,),
    ),
    "json-body": (lambda: raw(b'{"file": "image.png"}', "application/json"), (422,)),
    "urlencoded-body": (
        lambda: raw(b"file=image.png", "application/x-www-form-urlencoded"),
        (422,),
    ),
    "text-body": (lambda: raw(VALID, "text/plain"), (422,)),
    "no-content-type": (lambda: raw(VALID, None), (422,)),
    "truncated-png": (lambda: multipart(VALID[: len(VALID) // 2]), (415,)),
    "truncated-jpeg": (lambda: multipart(saved(rgb(30, 40), "JPEG")[:200]), (415,)),
    "truncated-gif": (lambda: multipart(saved(rgb(30, 40)[..., 0], "GIF")[:60]), (415,)),
    "truncated-bmp": (lambda: multipart(saved(rgb(30, 40), "BMP")[:500]), (415,)),
    "png-signature-only": (lambda: multipart(VALID[:8]), (415,)),
    "over-the-byte-limit": (lambda: multipart(png_file(rgb(200, 200))), (413,)),
    "over-the-pixel-limit": (
        lambda: multipart(png_file(np.zeros((200, 200, 3), np.uint8))),
        (413,),
    ),
    "random-bytes": (lambda: multipart(np.random.default_rng(0).bytes(3000)), (415,)),
}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_each_bad_request_is_a_4xx_with_a_message(url, name):
    make, statuses = REQUESTS[name]
    body, headers = make()
    assert_refused(request(f"{url}/predict", body, headers), *statuses)


def test_a_body_that_is_not_multipart_is_400_saying_why_and_how(url):
    body, _ = multipart(VALID)
    message = assert_refused(
        request(f"{url}/predict", body, {"Content-Type": "multipart/form-data"})
    )
    assert message.startswith("the request body could not be parsed (Missing boundary")
    assert "multipart/form-data in a field named 'file'" in message


# --- generated bad requests -------------------------------------------------------------------


SAMPLES = {
    "png": png_file(rgb(12, 16, seed=1)),
    "jpeg": saved(rgb(12, 16, seed=2), "JPEG"),
    "gif": saved(rgb(12, 16, seed=3)[..., 0], "GIF"),
    "bmp": saved(rgb(12, 16, seed=4), "BMP"),
    "tiff": saved(rgb(12, 16, seed=5), "TIFF"),
}


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid small image with bytes overwritten, cut out or inserted, and maybe cut short."""
    data = bytearray(SAMPLES[draw(st.sampled_from(sorted(SAMPLES)))])
    for _ in range(draw(st.integers(1, 8))):
        where = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["overwrite", "delete", "insert"]))
        chunk = draw(st.binary(min_size=1, max_size=8))
        if action == "overwrite":
            data[where : where + len(chunk)] = chunk
        elif action == "delete":
            del data[where : where + len(chunk)]
        else:
            data[where:where] = chunk
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_are_refused_with_a_message(url, data):
    assert_refused(upload(url, data), HTTPStatus.UNSUPPORTED_MEDIA_TYPE)


@FUZZ
@given(data=mutated_images())
def test_mutated_images_are_predicted_or_refused(url, data):
    assert_answered(upload(url, data))


@FUZZ
@given(
    width=st.integers(0, 2**31 - 1),
    height=st.integers(0, 2**31 - 1),
    depth_and_colour=st.sampled_from(
        [(1, 0), (8, 0), (16, 0), (8, 2), (16, 2), (8, 3), (8, 4), (8, 6)]
    ),
    idat=st.binary(max_size=64),
)
def test_png_headers_claiming_any_size_are_refused(url, width, height, depth_and_colour, idat):
    data = png_claiming(width, height, *depth_and_colour, idat=idat)
    answer = upload(url, data)
    if width * height > LIMIT_PIXELS:
        assert_refused(answer, HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    else:
        assert_answered(answer)


HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


@st.composite
def multipart_envelopes(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """A body of boundary lines, part headers and random bytes, under a random Content-Type."""
    boundary = draw(st.sampled_from(["b", "----x", ""]) | HEADER_TEXT)
    content_type = draw(
        st.sampled_from(
            [
                f"multipart/form-data; boundary={boundary}",
                f'multipart/form-data; boundary="{boundary}"',
                "multipart/form-data",
                "multipart/mixed; boundary=b",
            ]
        )
        | HEADER_TEXT
    )
    pieces = st.sampled_from(
        [
            f"--{boundary}\r\n".encode("latin-1"),
            f"--{boundary}--\r\n".encode("latin-1"),
            b'Content-Disposition: form-data; name="file"; filename="a.png"\r\n',
            b'Content-Disposition: form-data; name="file"\r\n',
            b"Content-Type: image/png\r\n",
            b"\r\n",
            SAMPLES["png"],
        ]
    ) | st.binary(max_size=64)
    body = b"".join(draw(st.lists(pieces, max_size=12)))
    return body, {"Content-Type": content_type}


@FUZZ
@given(envelope=multipart_envelopes())
def test_random_multipart_envelopes_are_answered(url, envelope):
    body, headers = envelope
    assert_answered(request(f"{url}/predict", body, headers))


@FUZZ
@given(data=st.one_of(st.binary(max_size=4096), mutated_images()))
def test_the_decoder_gives_an_image_or_an_upload_error(data):
    try:
        image = decode_image(data, 3, LIMIT_PIXELS)
    except UploadError as error:
        assert 400 <= error.status < 500 and len(error.message) > 20
    else:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.shape[0] * image.shape[1] <= LIMIT_PIXELS


# --- and afterwards --------------------------------------------------------------------------


def test_after_all_that_the_server_is_healthy_and_predicts(url, checkpoint, tmp_path):
    reference = Segmenter.from_checkpoint(checkpoint, device="cpu", batch_size=4)
    assert get_json(f"{url}/health") == (200, {"status": "ok"})
    status, _, body = upload(url, VALID)
    assert status == 200
    np.testing.assert_array_equal(
        decoded_png(body), expected_mask(reference, VALID, tmp_path, "valid.png")
    )
