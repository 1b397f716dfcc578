"""Dataset download: resume, checksums, safe extraction, idempotence, mirrors, the CLI.

Archives are generated here and served by a local HTTP server on 127.0.0.1 that honours (or, on
request, ignores) Range headers and records every request; nothing touches the network.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from unetkit.cli.main import main
from unetkit.config import Config
from unetkit.data import download as dl
from unetkit.data.checks import check_splits
from unetkit.data.download import Archive, DownloadableDataset, DownloadError
from unetkit.data.registry import build_splits

NAMES = [f"{breed}_{i}" for breed in ("Abyssinian", "beagle") for i in range(1, 5)]
TRAINVAL = ["Abyssinian_1", "Abyssinian_2", "Abyssinian_3", "beagle_1", "beagle_2", "beagle_3"]
TEST = ["Abyssinian_4", "beagle_4"]


# --- a local server -------------------------------------------------------------------------


@dataclass
class Served:
    """Files the server holds, how it behaves, and what it was asked."""

    files: dict[str, bytes]
    honour_range: bool = True
    cut_after: int | None = None  # send only this many bytes of the next response, then hang up
    requests: list[dict] = field(default_factory=list)


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            wanted = self.headers.get("Range")
            record = {"path": self.path, "range": wanted, "sent": 0}
            served.requests.append(record)
            body = served.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            if wanted and served.honour_range:
                start = int(wanted.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            payload = body[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if served.cut_after is not None:
                payload, served.cut_after = payload[: served.cut_after], None
            self.wfile.write(payload)
            record["sent"] = len(payload)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def server():
    served = Served(files={})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    served.url = f"http://127.0.0.1:{httpd.server_address[1]}/pets"
    yield served
    httpd.shutdown()
    httpd.server_close()


# --- generated archives ---------------------------------------------------------------------


def _encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _pet_archives() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    images = {
        f"images/{n}.jpg": _encoded(rng.integers(0, 255, (40, 48, 3), np.uint8), "JPEG")
        for n in NAMES
    }
    trimap = np.ones((40, 48), np.uint8)
    trimap[10:30, 10:40] = 2
    annotations = {f"annotations/trimaps/{n}.png": _encoded(trimap, "PNG") for n in NAMES}
    annotations["annotations/trimaps/._beagle_1.png"] = b"\x00\x05\x16\x07 resource fork"
    annotations["annotations/trainval.txt"] = "".join(f"{n} 1 1 1\n" for n in TRAINVAL).encode()
    annotations["annotations/test.txt"] = "".join(f"{n} 1 1 1\n" for n in TEST).encode()
    return {"images.tar.gz": _tar_gz(images), "annotations.tar.gz": _tar_gz(annotations)}


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _spec(
    archives: dict[str, bytes], base_url: str, wrong_md5_for: str = ""
) -> DownloadableDataset:
    md5 = {name: _md5(data) for name, data in archives.items()}
    if wrong_md5_for:
        md5[wrong_md5_for] = "0" * 32
    return DownloadableDataset(
        "oxford-pet",
        base_url,
        (
            Archive("images.tar.gz", md5["images.tar.gz"], ("images",)),
            Archive(
                "annotations.tar.gz",
                md5["annotations.tar.gz"],
                ("annotations/trimaps", "annotations/trainval.txt", "annotations/test.txt"),
            ),
        ),
    )


@pytest.fixture
def pets(server):
    archives = _pet_archives()
    server.files.update({f"/pets/{name}": data for name, data in archives.items()})
    return archives


def _paths(requests: list[dict]) -> list[str]:
    return [r["path"].rsplit("/", 1)[-1] for r in requests]


# --- download -------------------------------------------------------------------------------


def test_download_gives_the_layout_the_oxford_pet_loader_expects(tmp_path, server, pets):
    root = tmp_path / "pets"
    report = dl.download_dataset(_spec(pets, server.url), root, progress=False)

    assert report.actions == {
        "images.tar.gz": "downloaded, verified and extracted",
        "annotations.tar.gz": "downloaded, verified and extracted",
    }
    assert sorted(p.stem for p in (root / "images").glob("*.jpg")) == sorted(NAMES)
    assert sorted(p.stem for p in (root / "annotations/trimaps").glob("*.png")) == sorted(NAMES)
    assert not (root / "annotations/trimaps/._beagle_1.png").exists()  # resource fork skipped
    trimap = np.asarray(Image.open(root / "annotations/trimaps/beagle_1.png"))
    assert trimap.shape == (40, 48) and set(np.unique(trimap)) == {1, 2}
    assert (root / "annotations/test.txt").read_text().startswith("Abyssinian_4 1 1 1")
    assert not list(root.glob("*.tar.gz*"))  # archives and .part files are gone
    assert [(r["range"], r["sent"]) for r in server.requests] == [
        (None, len(pets["images.tar.gz"])),
        (None, len(pets["annotations.tar.gz"])),
    ]


def test_downloaded_folder_loads_with_the_oxford_pet_loader(tmp_path, server, pets):
    pytest.importorskip("unetkit.data.datasets.oxford_pet")
    root = tmp_path / "pets"
    dl.download_dataset(_spec(pets, server.url), root, progress=False)
    cfg = Config()
    cfg.data.dataset = "oxford-pet"
    cfg.data.root = str(root)
    splits = build_splits(cfg)
    assert sorted(splits.test.names) == TEST
    assert sorted(splits.train.names + splits.val.names) == TRAINVAL
    assert check_splits(splits, progress=False) == []  # every image/trimap pair is readable


def test_second_call_requests_nothing_and_says_so(tmp_path, server, pets, monkeypatch, capsys):
    spec = _spec(pets, server.url)
    monkeypatch.setitem(dl.DOWNLOADABLE, "oxford-pet", spec)
    root = tmp_path / "pets"
    args = ["data", "download", "oxford-pet", "--root", str(root), "--no-progress"]
    assert main(args) == 0
    assert len(server.requests) == 2
    first = capsys.readouterr().out
    assert "images.tar.gz: downloaded, verified and extracted" in first

    server.requests.clear()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert server.requests == []
    assert "images.tar.gz: already present" in out
    assert "nothing was downloaded or extracted" in out

    # A deleted folder is noticed: only its archive is fetched again.
    for path in (root / "images").iterdir():
        path.unlink()
    (root / "images").rmdir()
    assert main(args) == 0
    assert _paths(server.requests) == ["images.tar.gz"]


def test_checksum_mismatch_is_clear_and_extracts_nothing(tmp_path, server, pets):
    root = tmp_path / "pets"
    bad = _spec(pets, server.url, wrong_md5_for="annotations.tar.gz")
    with pytest.raises(
        DownloadError, match=r"annotations\.tar\.gz downloaded with MD5 \w+ but 0{32}"
    ):
        dl.download_dataset(bad, root, progress=False)
    assert not (root / "images").exists() and not (root / "annotations").exists()
    assert not (root / "annotations.tar.gz.part").exists()  # deleted: the next call starts afresh
    assert (root / "images.tar.gz").is_file()  # verified, kept for the next call

    server.requests.clear()
    report = dl.download_dataset(_spec(pets, server.url), root, progress=False)
    assert _paths(server.requests) == ["annotations.tar.gz"]
    assert report.actions["images.tar.gz"] == "archive already downloaded, verified and extracted"
    assert (root / "images" / "beagle_4.jpg").is_file()


def test_partial_download_is_resumed_with_a_range_request(tmp_path, server, pets):
    root = tmp_path / "pets"
    root.mkdir()
    data = pets["images.tar.gz"]
    kept = len(data) // 3
    (root / "images.tar.gz.part").write_bytes(data[:kept])

    report = dl.download_dataset(_spec(pets, server.url), root, progress=False)

    first = server.requests[0]
    assert _paths([first]) == ["images.tar.gz"]
    assert first["range"] == f"bytes={kept}-"
    assert first["sent"] == len(data) - kept  # only the rest travelled
    assert report.actions["images.tar.gz"] == f"resumed at {kept} bytes, verified and extracted"
    assert len(list((root / "images").glob("*.jpg"))) == len(NAMES)


def test_interrupted_download_keeps_its_bytes_and_the_next_call_resumes(tmp_path, server, pets):
    root = tmp_path / "pets"
    data = pets["images.tar.gz"]
    server.cut_after = 1000
    with pytest.raises(DownloadError, match="interrupted.*run the command again to resume"):
        dl.download_dataset(_spec(pets, server.url), root, progress=False)
    assert (root / "images.tar.gz.part").read_bytes() == data[:1000]

    server.requests.clear()
    dl.download_dataset(_spec(pets, server.url), root, progress=False)
    assert server.requests[0]["range"] == "bytes=1000-"
    assert server.requests[0]["sent"] == len(data) - 1000
    assert (root / "annotations" / "trainval.txt").is_file()


def test_complete_partial_download_is_verified_without_fetching_more(tmp_path, server, pets):
    root = tmp_path / "pets"
    root.mkdir()
    data = pets["images.tar.gz"]
    (root / "images.tar.gz.part").write_bytes(data)  # finished, but not yet renamed
    dl.download_dataset(_spec(pets, server.url), root, progress=False)
    first = server.requests[0]
    assert (first["range"], first["sent"]) == (f"bytes={len(data)}-", 0)  # answered 416
    assert len(list((root / "images").glob("*.jpg"))) == len(NAMES)


def test_server_that_ignores_range_gets_a_full_download(tmp_path, server, pets):
    root = tmp_path / "pets"
    root.mkdir()
    (root / "images.tar.gz.part").write_bytes(b"stale bytes from another file")
    server.honour_range = False

    report = dl.download_dataset(_spec(pets, server.url), root, progress=False)

    first = server.requests[0]
    assert first["range"] == "bytes=29-" and first["sent"] == len(pets["images.tar.gz"])
    assert report.actions["images.tar.gz"] == "downloaded, verified and extracted"
    assert len(list((root / "images").glob("*.jpg"))) == len(NAMES)


def test_a_corrupt_partial_download_is_deleted_then_downloaded_afresh(tmp_path, server, pets):
    root = tmp_path / "pets"
    root.mkdir()
    (root / "images.tar.gz.part").write_bytes(b"x" * 100)  # the server resumes after junk
    with pytest.raises(DownloadError, match="MD5"):
        dl.download_dataset(_spec(pets, server.url), root, progress=False)
    assert not (root / "images.tar.gz.part").exists()
    dl.download_dataset(_spec(pets, server.url), root, progress=False)
    assert len(list((root / "images").glob("*.jpg"))) == len(NAMES)


def test_missing_file_on_the_server_names_the_url(tmp_path, server, pets):
    del server.files["/pets/annotations.tar.gz"]
    with pytest.raises(DownloadError, match=r"/pets/annotations\.tar\.gz: HTTP 404"):
        dl.download_dataset(_spec(pets, server.url), tmp_path / "pets", progress=False)
    assert not (tmp_path / "pets" / "images").exists()


# --- mirrors --------------------------------------------------------------------------------


def test_mirror_option_beats_the_environment_which_beats_the_publisher(tmp_path, monkeypatch):
    monkeypatch.delenv(dl.MIRROR_ENV, raising=False)
    assert dl.base_url_for(dl.OXFORD_PET) == "https://www.robots.ox.ac.uk/~vgg/data/pets/data"
    monkeypatch.setenv(dl.MIRROR_ENV, "http://mirror.example/pets/")
    assert dl.base_url_for(dl.OXFORD_PET) == "http://mirror.example/pets"
    assert dl.base_url_for(dl.OXFORD_PET, "http://other.example") == "http://other.example"
    assert dl.base_url_for(dl.OXFORD_PET, str(tmp_path)) == tmp_path.resolve().as_uri()


def test_environment_mirror_is_used(tmp_path, server, pets, monkeypatch):
    monkeypatch.setenv(dl.MIRROR_ENV, server.url)
    spec = _spec(pets, "http://127.0.0.1:9/unreachable")
    dl.download_dataset(spec, tmp_path / "pets", progress=False)
    assert _paths(server.requests) == ["images.tar.gz", "annotations.tar.gz"]


def test_a_local_folder_works_as_a_mirror(tmp_path, monkeypatch):
    monkeypatch.delenv(dl.MIRROR_ENV, raising=False)
    archives = _pet_archives()
    folder = tmp_path / "mirror"
    folder.mkdir()
    for name, data in archives.items():
        (folder / name).write_bytes(data)
    spec = _spec(archives, "http://127.0.0.1:9/unreachable")
    dl.download_dataset(spec, tmp_path / "pets", mirror=str(folder), progress=False)
    assert (tmp_path / "pets" / "annotations" / "trimaps" / "beagle_2.png").is_file()


# --- safe extraction ------------------------------------------------------------------------


def _tar_with(bad: tarfile.TarInfo) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        good = tarfile.TarInfo("data/good.txt")
        good.size = 4
        tar.addfile(good, io.BytesIO(b"good"))
        payload = b"evil" if bad.isfile() else b""
        bad.size = len(payload)
        tar.addfile(bad, io.BytesIO(payload))
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_member("../evil.txt"), "path leaves the target folder"),
        (_member("data/../../evil.txt"), "path leaves the target folder"),
        (_member("/tmp/unetkit-evil.txt"), "absolute path"),
        (_member("data/link", tarfile.SYMTYPE, "../../outside"), "link points outside"),
        (_member("data/abs", tarfile.SYMTYPE, "/etc/passwd"), "link to an absolute path"),
        (_member("data/hard", tarfile.LNKTYPE, "../outside"), "link points outside"),
        (_member("data/dev", tarfile.CHRTYPE), "device, FIFO or other special file"),
    ],
)
def test_unsafe_member_rejects_the_whole_archive(tmp_path, member, reason):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(_tar_with(member))
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(DownloadError, match=reason) as error:
        dl.safe_extract(archive, target)
    assert member.name in str(error.value) and "nothing was extracted" in str(error.value)
    assert list(target.iterdir()) == []  # not even the good member
    assert not (tmp_path / "evil.txt").exists()


def test_links_inside_the_target_are_allowed(tmp_path):
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(_tar_with(_member("data/alias.txt", tarfile.SYMTYPE, "good.txt")))
    dl.safe_extract(archive, tmp_path / "target")
    assert (tmp_path / "target" / "data" / "alias.txt").read_text() == "good"


def test_traversal_archive_from_the_server_extracts_nothing(tmp_path, server, pets):
    evil = _tar_with(_member("../../escaped.txt"))
    server.files["/pets/images.tar.gz"] = evil
    spec = _spec({**pets, "images.tar.gz": evil}, server.url)
    root = tmp_path / "a" / "pets"
    with pytest.raises(DownloadError, match="unsafe member"):
        dl.download_dataset(spec, root, progress=False)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (root / "data").exists() and not (root / "annotations").exists()


def test_corrupt_archive_is_reported(tmp_path):
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(_pet_archives()["images.tar.gz"][:200])
    with pytest.raises(DownloadError, match="cannot be read as a tar archive"):
        dl.safe_extract(archive, tmp_path / "target")


# --- datasets fetched by hand ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("drive", "drive.grand-challenge.org"),
        ("ccagt", "data.mendeley.com"),
        ("camvid", "CamVid"),
        ("isbi2012", "isbi-2012"),
    ],
)
def test_manual_datasets_print_where_and_layout_and_exit_3(tmp_path, capsys, name, where):
    root = tmp_path / name
    assert main(["data", "download", name, "--root", str(root)]) == 3
    captured = capsys.readouterr()
    assert where in captured.out
    assert f"lay it out as: {root}/" in captured.out
    assert "nothing was downloaded" in captured.err
    assert not root.exists()
    # The layout shown is the loader's own, when the loader exists.
    loader_layout = dl.loader_layout(dl.MANUAL[name].loader)
    if loader_layout is not None:
        shown = loader_layout.removeprefix("expected layout: ").replace("<root>", str(root))
        assert shown in captured.out


def test_unknown_dataset_lists_the_known_ones(capsys):
    assert main(["data", "download", "imagenet"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'imagenet'" in err
    for name in ["oxford-pet", "camvid", "ccagt", "drive", "isbi2012"]:
        assert name in err


def test_download_without_root_says_what_to_give(capsys):
    assert main(["data", "download", "oxford-pet"]) == 2
    assert "--root data/oxford-pet" in capsys.readouterr().err
