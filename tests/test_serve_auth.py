"""The API key: with one set, every route but the page and /health answers 401 without it.

Served over real HTTP on 127.0.0.1 as in ``test_serve``; the key is never in an answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from model_helpers import rgb
from test_inference import write_checkpoint
from test_serve import (
    decoded_png,
    detail,
    expected_mask,
    get_json,
    multipart,
    png_file,
    request,
    serving,
    upload,
)

from unetkit.cli.main import build_parser, main
from unetkit.inference.segmenter import Segmenter
from unetkit.serve import auth
from unetkit.serve.admission import DEFAULT_MAX_QUEUE, DEFAULT_TIMEOUT_S
from unetkit.serve.auth import API_KEY_VARIABLE, resolve_api_key

pytestmark = pytest.mark.usefixtures("one_thread")

KEY = "k3y-For.Tests_0123456789"
BEARER = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve-auth") / "best.pt"
    write_checkpoint(path, 3)
    return path


@pytest.fixture(scope="module")
def url(checkpoint: Path) -> Iterator[str]:
    with serving(checkpoint, api_key=KEY) as base:  # serving checks /health without the key
        yield base


def assert_refused(answer: tuple[int, object, bytes], problem: str) -> None:
    status, headers, body = answer
    assert status == 401, body
    assert headers["Content-Type"] == "application/json"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert problem in detail(body)
    assert "'Authorization: Bearer <key>'" in detail(body)  # how to send it
    assert KEY not in body.decode() and KEY not in str(headers)


CLOSED = ["/model", "/openapi.json", "/no-such-route"]


@pytest.mark.parametrize("path", CLOSED)
def test_closed_routes_need_the_key(url, path):
    assert_refused(request(f"{url}{path}"), "the request has no Authorization header")


def test_predict_needs_the_key_and_answers_with_it(url, checkpoint, tmp_path):
    data = png_file(rgb(21, 26, seed=3))
    assert_refused(upload(url, data), "the request has no Authorization header")

    body, headers = multipart(data)
    status, answer_headers, answer = request(f"{url}/predict", body, {**headers, **BEARER})
    assert status == 200 and answer_headers["Content-Type"] == "image/png"
    reference = Segmenter.from_checkpoint(checkpoint, device="cpu", batch_size=4)
    np.testing.assert_array_equal(
        decoded_png(answer), expected_mask(reference, data, tmp_path, "image.png")
    )


@pytest.mark.parametrize(
    ("authorization", "problem"),
    [
        (f"Bearer {KEY}x", "the API key sent is not this service's key"),
        (f"Bearer {KEY[:-1]}", "the API key sent is not this service's key"),
        ("Bearer ", "the API key sent is not this service's key"),
        (KEY, "does not use the Bearer scheme"),  # a bare key: not echoed as the "scheme"
        (f"Basic {KEY}", "does not use the Bearer scheme"),
        ("Bearer ключ", "the API key sent is not this service's key"),  # not ASCII
    ],
    ids=["longer", "shorter", "empty", "bare-key", "basic", "non-ascii"],
)
def test_a_wrong_credential_is_401_saying_what_is_wrong(url, authorization, problem):
    headers = {"Authorization": authorization.encode("utf-8").decode("latin-1")}
    assert_refused(request(f"{url}/model", headers=headers), problem)


def test_with_the_key_the_model_is_described(url):
    status, _, body = request(f"{url}/model", headers=BEARER)
    assert status == 200 and json.loads(body)["classes"][1]["name"] == "class1"
    lower_case = {"Authorization": f"bearer  {KEY} "}  # the scheme is case-insensitive
    assert request(f"{url}/model", headers=lower_case)[0] == 200


def test_the_key_is_compared_in_constant_time(url, monkeypatch):
    compared = []

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return a == b

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert request(f"{url}/model", headers=BEARER)[0] == 200
    assert request(f"{url}/model", headers={"Authorization": "Bearer nope"})[0] == 401
    assert compared == [(KEY.encode(), KEY.encode()), (b"nope", KEY.encode())]


def test_the_page_and_health_are_open_and_the_page_carries_no_model_data(url):
    assert get_json(f"{url}/health") == (200, {"status": "ok"})
    status, headers, body = request(f"{url}/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert re.search(r'<input type="password" id="api-key"', page)
    inlined = re.search(r'<script type="application/json" id="model-info">(.*?)</script>', page)
    assert json.loads(inlined.group(1)) is None
    assert "class1" not in page and "Bearer" in page


def test_without_a_key_there_is_no_key_field():
    from unetkit.serve.page import render_page

    page = render_page({"classes": []})
    assert 'id="api-key"' not in page
    assert re.search(r'id="model-info">\{"classes": \[\]\}</script>', page)


# --- where the key comes from ---------------------------------------------------------------


def test_the_flag_wins_over_the_variable_and_no_key_means_open(monkeypatch):
    monkeypatch.delenv(API_KEY_VARIABLE, raising=False)
    assert resolve_api_key(None) is None
    monkeypatch.setenv(API_KEY_VARIABLE, "from-env")
    assert resolve_api_key(None) == "from-env"
    assert resolve_api_key("from-flag") == "from-flag"


@pytest.mark.parametrize(
    ("key", "message"),
    [("", "is empty"), ("two words", "cannot carry"), ("ключ", "cannot carry")],
    ids=["empty", "space", "non-ascii"],
)
def test_unusable_keys_are_refused_without_echoing_them(monkeypatch, capsys, key, message):
    monkeypatch.setenv(API_KEY_VARIABLE, key)
    with pytest.raises(ValueError, match=message) as error:
        resolve_api_key(None)
    assert key == "" or key not in str(error.value)

    # the CLI says so before loading any model (the checkpoint does not exist)
    assert main(["serve", "--checkpoint", "missing.pt"]) == 2
    err = capsys.readouterr().err
    assert f"unetkit serve: error: the API key (--api-key or ${API_KEY_VARIABLE})" in err
    assert message in err and (key == "" or key not in err)


def test_serve_help_documents_the_key_and_the_limits(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--api-key API_KEY", "--max-queue MAX_QUEUE", "--request-timeout SECONDS"):
        assert flag in text
    assert "(default: $UNETKIT_API_KEY, else no key)" in text and "Retry-After" in text
    assert "(default 64)" in text and "(default 30)" in text
    defaults = build_parser().parse_args(["serve", "--checkpoint", "x.pt"])
    assert (defaults.api_key, defaults.max_queue, defaults.request_timeout) == (None, 64, 30.0)
    assert (DEFAULT_MAX_QUEUE, DEFAULT_TIMEOUT_S) == (64, 30.0)  # the library's, the same


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ({"path": "/health"}, "/health"),
        ({"path": "/api/health", "root_path": "/api"}, "/health"),  # mounted behind a proxy
        ({"path": "/api", "root_path": "/api"}, ""),
        ({"path": "/apix/health", "root_path": "/api"}, "/apix/health"),  # not under the mount
    ],
)
def test_routes_are_judged_by_the_path_the_router_matches(scope, expected):
    from unetkit.serve.scope import route_path

    assert route_path(scope) == expected
