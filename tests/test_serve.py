"""The HTTP service: started with uvicorn on 127.0.0.1 and talked to over real HTTP with urllib.

Masks are checked against the Segmenter loaded independently from the same checkpoint, on the
image as ``unetkit predict`` reads the same file (``read_image``).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from email.message import Message
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import uvicorn
from model_helpers import rgb
from PIL import Image
from test_inference import assert_same_labels, write_checkpoint

from unetkit.data.image_files import read_image
from unetkit.inference.segmenter import Segmenter
from unetkit.palette import class_palette
from unetkit.serve import build_server, create_app
from unetkit.serve.answer import class_areas
from unetkit.serve.batcher import BatchingPredictor

TIMEOUT_S = 30
CLASS_NAMES = ["background", "class1", "class2"]


pytestmark = pytest.mark.usefixtures("one_thread")


# --- a server on a free port, and HTTP by hand ------------------------------------------------


@contextmanager
def running(server: uvicorn.Server) -> Iterator[str]:
    """Run a uvicorn server (built with port 0) on a thread; yields its base URL."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    try:
        assert get_json(f"{url}/health") == (200, {"status": "ok"})
        yield url
    finally:
        server.should_exit = True
        thread.join(TIMEOUT_S)
        assert not thread.is_alive(), "the server did not stop"


def serving(checkpoint: Path, **options: Any) -> AbstractContextManager[str]:
    """A server of ``checkpoint`` on a free port of 127.0.0.1, as a context giving its URL."""
    options = {"device": "cpu", "batch_size": 4, "log_level": "warning", **options}
    return running(build_server(checkpoint, port=0, **options))


Answer = tuple[int, Message, bytes]


def request(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
    """``(status, headers, body)`` of a GET (no body) or POST, 4xx and 5xx included."""
    method = "GET" if body is None else "POST"
    message = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(message, timeout=TIMEOUT_S) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def get_json(url: str) -> tuple[int, Any]:
    status, _, body = request(url)
    return status, json.loads(body)


def multipart(
    data: bytes, field: str = "file", filename: str = "image.png"
) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body with one file field: ``(body, headers)``."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    )
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def upload(url: str, data: bytes, query: str = "", **fields: str) -> Answer:
    body, headers = multipart(data, **fields)
    return request(f"{url}/predict{query}", body, headers)


def png_file(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def decoded_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as picture:
        assert picture.format == "PNG"
        return np.asarray(picture)


def expected_mask(reference: Segmenter, data: bytes, tmp_path: Path, name: str) -> np.ndarray:
    """What ``unetkit predict`` writes for the file ``data``: the mask of read_image's array."""
    path = tmp_path / name
    path.write_bytes(data)
    return reference.predict(read_image(path, reference.preprocessing.in_channels))


def detail(body: bytes) -> str:
    return json.loads(body)["detail"]


# --- the model server shared by most tests ------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "best.pt"
    write_checkpoint(path, 3)
    return path


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> Segmenter:
    return Segmenter.from_checkpoint(checkpoint, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def url(checkpoint: Path) -> Iterator[str]:
    with serving(checkpoint) as base:
        yield base


# --- health, model, page ----------------------------------------------------------------------


def test_health_and_model_describe_the_checkpoint(url):
    assert get_json(f"{url}/health") == (200, {"status": "ok"})
    status, info = get_json(f"{url}/model")
    assert status == 200
    colours = [[230, 25, 75], [60, 180, 75]]  # the palette's first hues after black
    assert info == {
        "model": "unet",
        "task": "multiclass",
        "threshold": None,
        "label_thresholds": None,
        "classes": [
            {"id": 0, "name": "background", "colour": [0, 0, 0]},
            {"id": 1, "name": "class1", "colour": colours[0]},
            {"id": 2, "name": "class2", "colour": colours[1]},
        ],
        "input_size": [16, 20],
        "in_channels": 3,
        "unetkit_version": version("unetkit"),
    }
    np.testing.assert_array_equal(class_palette(3)[1:], colours)


def test_page_is_self_contained_and_carries_the_model(url):
    status, headers, body = request(f"{url}/")
    page = body.decode("utf-8")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert re.search(r'<input type="file" id="file"', page)
    assert "predict?format=json&overlay=true" in page
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page, re.IGNORECASE)
    inlined = re.search(r'<script type="application/json" id="model-info">(.*?)</script>', page)
    assert json.loads(inlined.group(1)) == get_json(f"{url}/model")[1]


def test_class_names_cannot_break_out_of_the_page_script():
    from unetkit.serve.page import render_page

    page = render_page({"classes": [{"name": "</script><b>x</b>"}]})
    assert page.count("</script>") == 2  # the page's own two scripts
    inlined = re.search(r'id="model-info">(.*?)</script>', page).group(1)
    assert json.loads(inlined) == {"classes": [{"name": "</script><b>x</b>"}]}


# --- predictions --------------------------------------------------------------------------------


def tiff_file(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, picture, photometric="minisblack", planarconfig="contig")
    return buffer.getvalue()


def jpeg_file(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


UPLOADS = {
    "rgb.png": lambda: png_file(rgb(23, 37, seed=1)),
    "grey.png": lambda: png_file(rgb(19, 26, seed=2)[..., 0]),
    "rgba.png": lambda: png_file(np.dstack([rgb(21, 18, seed=3), rgb(21, 18, seed=4)[..., 0]])),
    "16bit.png": lambda: png_file(rgb(17, 22, seed=5)[..., 0].astype(np.uint16) * 200),
    "photo.jpg": lambda: jpeg_file(rgb(24, 30, seed=6)),
    "grey-alpha.tif": lambda: tiff_file(rgb(20, 25, seed=7)[..., :2]),
}


@pytest.mark.parametrize("name", list(UPLOADS))
def test_predicted_png_is_the_mask_predict_writes(url, reference, tmp_path, name):
    data = UPLOADS[name]()
    status, headers, body = upload(url, data, filename=name)

    assert status == 200, body
    assert headers["Content-Type"] == "image/png"
    mask = decoded_png(body)
    expected = expected_mask(reference, data, tmp_path, name)
    assert mask.dtype == np.uint8 and mask.shape == expected.shape
    np.testing.assert_array_equal(mask, expected)
    assert len(np.unique(mask)) > 1, "the test model should predict more than one class"


def test_json_answer_has_the_mask_and_areas_that_sum_to_the_image(url, reference, tmp_path):
    data = png_file(rgb(29, 41, seed=8))
    status, headers, body = upload(url, data, "?format=json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    answer = json.loads(body)
    expected = expected_mask(reference, data, tmp_path, "image.png")

    assert set(answer) == {"width", "height", "classes", "mask_png_base64"}
    assert (answer["width"], answer["height"]) == (41, 29)
    np.testing.assert_array_equal(
        decoded_png(base64.b64decode(answer["mask_png_base64"])), expected
    )
    assert [c["id"] for c in answer["classes"]] == [0, 1, 2]
    assert [c["name"] for c in answer["classes"]] == CLASS_NAMES
    assert sum(c["pixels"] for c in answer["classes"]) == 29 * 41
    for area in answer["classes"]:
        assert area["pixels"] == int((expected == area["id"]).sum())
        assert area["fraction"] == area["pixels"] / (29 * 41)


def test_class_areas_by_hand():
    mask = np.array([[0, 1], [1, 1]], np.uint8)
    assert class_areas(mask, ["a", "b", "c"]) == [
        {"id": 0, "name": "a", "pixels": 1, "fraction": 0.25},
        {"id": 1, "name": "b", "pixels": 3, "fraction": 0.75},
        {"id": 2, "name": "c", "pixels": 0, "fraction": 0.0},
    ]


def test_overlay_tints_the_predicted_classes(url, reference, tmp_path):
    image = rgb(22, 27, seed=9)
    data = png_file(image)
    expected = expected_mask(reference, data, tmp_path, "image.png")

    status, headers, body = upload(url, data, "?overlay=true")
    assert status == 200 and headers["Content-Type"] == "image/png"
    tinted = decoded_png(body).astype(np.float64)
    assert tinted.shape == (22, 27, 3)
    background = expected == 0
    np.testing.assert_array_equal(tinted[background], image[background])
    for label in (1, 2):
        blend = 0.5 * image[expected == label] + 0.5 * class_palette(3)[label]
        np.testing.assert_allclose(tinted[expected == label], blend, atol=0.5 + 1e-9)

    _, _, json_body = upload(url, data, "?format=json&overlay=true")
    from_json = decoded_png(base64.b64decode(json.loads(json_body)["overlay_png_base64"]))
    np.testing.assert_array_equal(from_json, tinted)


def test_binary_grey_model_reads_uploads_as_predict_does(tmp_path):
    checkpoint = tmp_path / "binary.pt"
    write_checkpoint(checkpoint, 2, in_channels=1)
    reference = Segmenter.from_checkpoint(checkpoint, device="cpu")
    data = png_file(rgb(25, 31, seed=10))  # colour: the model sees its luminance

    with serving(checkpoint) as base:
        _, info = get_json(f"{base}/model")
        status, _, body = upload(base, data)

    assert (info["task"], info["threshold"], info["in_channels"]) == ("binary", 0.5, 1)
    assert status == 200
    mask = decoded_png(body)
    np.testing.assert_array_equal(mask, expected_mask(reference, data, tmp_path, "image.png"))
    assert set(np.unique(mask)) == {0, 1}


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello, this is a text file and not an image", "not an image that can be read"),
        (b"", "the file is empty"),
        (png_file(rgb(40, 40))[:300], "could not be decoded as an image"),
    ],
    ids=["text", "empty", "truncated-png"],
)
def test_a_file_that_is_not_an_image_is_415(url, data, message):
    status, headers, body = upload(url, data)
    assert status == 415 and headers["Content-Type"] == "application/json"
    assert message in detail(body) and "send a PNG, JPEG, TIFF" in detail(body)


@pytest.mark.parametrize("channels", [5, 6])
def test_a_tiff_with_too_many_channels_is_422(url, channels):
    status, _, body = upload(url, tiff_file(rgb(9, 8)[..., :1].repeat(channels, 2)))
    assert status == 422
    assert f"the image has {channels} channels" in detail(body)
    assert "1 to 4 channels" in detail(body)


def test_a_tiff_whose_layout_cannot_be_decoded_is_415_naming_it(url):
    four_grey_planes = tiff_file(rgb(9, 8)[..., :1].repeat(4, 2))  # 4 channels, not RGBA
    status, _, body = upload(url, four_grey_planes)
    assert status == 415
    assert "the TIFF's layout (4 channels, minisblack, uint8) cannot be decoded" in detail(body)


@pytest.mark.parametrize(
    ("make_body", "message"),
    [
        (lambda: multipart(png_file(rgb(8, 8)), field="image"), "body.file: Field required"),
        (lambda: (b"", {}), "body.file: Field required"),
        (lambda: (png_file(rgb(8, 8)), {"Content-Type": "image/png"}), "Field required"),
    ],
    ids=["other-field", "no-body", "raw-image-body"],
)
def test_a_missing_file_field_is_422_with_how_to_send_it(url, make_body, message):
    body, headers = make_body()
    status, _, answer = request(f"{url}/predict", body, headers)
    assert status == 422
    assert message in detail(answer)
    assert "multipart/form-data in a field named 'file'" in detail(answer)


def test_bad_query_values_are_422(url):
    data = png_file(rgb(8, 8))
    status, _, body = upload(url, data, "?format=xml")
    assert status == 422 and "query.format: Input should be 'png' or 'json'" in detail(body)
    status, _, body = upload(url, data, "?overlay=maybe")
    assert status == 422 and "query.overlay" in detail(body)


LIMIT_BYTES = 4096
LIMIT_PIXELS = 500


@pytest.fixture(scope="module")
def small_url(checkpoint: Path) -> Iterator[str]:
    """A server that takes bodies up to 4096 bytes and images up to 500 pixels."""
    limits = {"max_upload_mb": LIMIT_BYTES / 2**20, "max_megapixels": LIMIT_PIXELS / 1e6}
    with serving(checkpoint, **limits) as base:
        yield base


def test_uploads_over_the_byte_limit_are_413(small_url):
    assert upload(small_url, png_file(rgb(20, 20)))[0] == 200  # 400 pixels, about 1.3 kB
    large = png_file(rgb(40, 40))  # incompressible: about 4.9 kB
    assert len(large) > LIMIT_BYTES

    status, headers, body = upload(small_url, large)
    assert status == 413 and headers["Content-Type"] == "application/json"
    assert "the limit is 4096 bytes" in detail(body) and "--max-upload-mb" in detail(body)


def test_images_over_the_pixel_limit_are_413(small_url):
    flat = png_file(np.full((30, 30, 3), 128, np.uint8))  # 900 pixels in a small file
    status, _, body = upload(small_url, flat)
    assert status == 413
    assert "30 x 30 = 900 pixels, more than the service's limit of 500" in detail(body)


def raw_exchange(url: str, head: bytes, chunks: list[bytes]) -> bytes:
    """Send a request without ever finishing its body; what the server answers before closing."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as connection:
        connection.sendall(head)
        for chunk in chunks:
            connection.sendall(chunk)
        answer = b""
        while data := connection.recv(65536):
            answer += data
    return answer


def test_the_byte_limit_is_enforced_before_the_body_is_read(small_url):
    start = b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; "
    declared = start + b"boundary=b\r\nContent-Length: 1000000000\r\n\r\n"
    answer = raw_exchange(small_url, declared, [])
    assert answer.startswith(b"HTTP/1.1 413 ") and b"declares 1000000000 bytes" in answer

    chunked = start + b"boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    chunks = [b"%x\r\n%s\r\n" % (len(c), c) for c in [part] + [b"x" * 1000] * 5]
    answer = raw_exchange(small_url, chunked, chunks)  # the closing 0-length chunk never comes
    assert answer.startswith(b"HTTP/1.1 413 ") and b"more than 4096 bytes arrived" in answer


# --- concurrency --------------------------------------------------------------------------------


def test_concurrent_requests_each_get_their_own_mask(url, reference):
    images = [rgb(14 + 3 * i, 40 - 2 * i, seed=20 + i) for i in range(12)]
    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        answers = list(pool.map(lambda image: upload(url, png_file(image)), images))

    for image, (status, _, body) in zip(images, answers, strict=True):
        assert status == 200
        mask = decoded_png(body)
        assert mask.shape == image.shape[:2]
        probs = reference.predict_proba(image)
        assert_same_labels(mask, reference.predict(image), probs, reference.task)


# --- the batching worker ----------------------------------------------------------------------


class GatedModel:
    """A stand-in model: the mask is the image times 10; its first call waits for a signal."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        self.entered.set()
        assert self.release.wait(TIMEOUT_S)
        self.batches.append([int(image[0]) for image in images])
        if any(image[0] < 0 for image in images):
            raise ValueError("negative image")
        return [image * 10 for image in images]


def test_waiting_requests_are_answered_in_batches_in_order():
    model = GatedModel()
    with BatchingPredictor(model, batch_size=3) as predictor:
        first = predictor.submit(np.array([0]))
        assert model.entered.wait(TIMEOUT_S)  # the worker is busy with image 0
        rest = [predictor.submit(np.array([i])) for i in range(1, 8)]
        model.release.set()
        results = [int(f.result(TIMEOUT_S)[0]) for f in [first, *rest]]
    assert model.batches == [[0], [1, 2, 3], [4, 5, 6], [7]]
    assert results == [0, 10, 20, 30, 40, 50, 60, 70]


def test_a_failing_image_fails_only_its_own_request():
    model = GatedModel()
    with BatchingPredictor(model, batch_size=4) as predictor:
        first = predictor.submit(np.array([0]))
        assert model.entered.wait(TIMEOUT_S)
        batch = [predictor.submit(np.array([value])) for value in (1, -1, 3)]
        model.release.set()
        assert first.result(TIMEOUT_S)[0] == 0
        assert batch[0].result(TIMEOUT_S)[0] == 10 and batch[2].result(TIMEOUT_S)[0] == 30
        with pytest.raises(ValueError, match="negative image"):
            batch[1].result(TIMEOUT_S)
    assert model.batches == [[0], [1, -1, 3], [1], [-1], [3]]


def test_the_predictor_runs_on_demand_and_answers_what_is_queued_before_closing():
    model = GatedModel()
    predictor = BatchingPredictor(model, batch_size=1)
    before = set(threading.enumerate())
    first = predictor.submit(np.array([1]))  # starts the worker
    assert model.entered.wait(TIMEOUT_S)
    (worker,) = set(threading.enumerate()) - before
    queued = predictor.submit(np.array([2]))
    model.release.set()
    predictor.close()
    assert not first.running() and first.result(0)[0] == 10 and queued.result(0)[0] == 20
    assert not worker.is_alive()
    assert predictor.submit(np.array([3])).result(TIMEOUT_S)[0] == 30  # restarted
    predictor.close()
    with pytest.raises(ValueError, match="batch_size must be a positive integer; got 0"):
        BatchingPredictor(model, batch_size=0)


def test_models_the_service_cannot_feed_are_refused_up_front(reference):
    four_channels = Segmenter(
        reference.model,
        reference.task,
        reference.class_names,
        dataclasses.replace(reference.preprocessing, in_channels=4),
        device="cpu",
    )
    with pytest.raises(ValueError, match="this model takes 4-channel input"):
        create_app(four_channels)
