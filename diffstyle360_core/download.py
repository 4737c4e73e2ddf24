"""Weights on demand: the official DiffPortrait360 set from the Hugging Face hub, converted once.

:func:`ensure_weight_set` fills a weight-set folder with what it lacks (README, Weights):

- ``main/`` and ``back_view/`` from ``model_state-340000.th`` / ``back_head-230000.th``,
  converted to fp16 safetensors with :func:`~.weights.convert_checkpoint`;
- the camera-condition set ``cam_condition/sphere32/`` from ``inference_data.zip``.

A ``.th`` file or ``inference_data.zip`` the user put into the set folder is used as
it is (and never deleted); for the official set, whatever is still missing is
downloaded from ``gym890/diffportrait360`` with ``huggingface_hub`` (``HF_ENDPOINT``,
``HF_TOKEN`` and ``HF_HUB_OFFLINE`` apply). Facts §5: over plain HTTP
``hf_hub_download`` checks only the size and restarts interrupted files from byte 0
in a fresh temporary file, so the download itself is ours: a stable
``<set>/.download/<file>.part`` that the next run continues with a Range request
(huggingface_hub's ``http_get``), the SHA-256 from the hub's LFS metadata checked
before the file is used, free disk space checked before anything starts, and every
file moved into place by a rename. Downloaded originals are deleted after the
conversion unless ``keep_originals``; nothing the user put there is ever deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

from .cameras import has_condition_folder
from .config import BACK_VIEW, CONDITION_SUBDIRS, CONFIG_NAME, MAIN
from .files import sha256_file, write_text_atomic
from .folder_lock import FolderLock, LockBusy, LockError
from .images import IMAGE_SUFFIXES
from .official_keys import HF_REPO, OFFICIAL_FILES

PathLike = Union[str, os.PathLike]

#: The name of the official weight set: ``models/diffstyle360/diffportrait360/`` (the workflows pick it).
OFFICIAL_SET = "diffportrait360"
#: The hub archive that holds the camera-condition renders (facts §5).
ARCHIVE = "inference_data.zip"
#: Our working folder inside a set: partial and verified-but-unconverted downloads, the lock.
WORK_DIR = ".download"
#: Where the extracted camera set goes (the first place :func:`~.cameras.find_condition_folder` looks).
CAMERA_DIR = CONDITION_SUBDIRS[0]
#: Kept free beyond what the run writes (file-system metadata, other programs).
DISK_MARGIN = 100 * 2**20
#: Archive limits: a camera render is a small image; a zip bomb or a tampered archive is refused.
MAX_ARCHIVE_ENTRIES = 100_000
MAX_IMAGE_BYTES = 64 * 2**20
MAX_CAMERA_BYTES = 2 * 2**30
#: Name patterns of hand-placed official checkpoints (any other ``.th`` is identified by its keys).
TH_PATTERNS = {MAIN: re.compile(r"^model_state.*\.th$"), BACK_VIEW: re.compile(r"^back_head.*\.th$")}

#: ``progress(event)``; an exception it raises (a Cancel) stops the run, and what is done is kept.
ProgressCallback = Callable[["ProgressEvent"], None]


# --------------------------------------------------------------------------------------------- errors
class DownloadError(OSError):
    """Getting the weights failed in a way the message explains (network, hub, lock)."""


class OfflineError(DownloadError):
    """Files must be downloaded but HF_HUB_OFFLINE is set."""


class DiskSpaceError(DownloadError):
    """Not enough free disk space for the downloads and conversions (checked before starting)."""


class ChecksumError(DownloadError):
    """A downloaded file's SHA-256 differs from the hub's: the file was removed."""


class UnsafeArchiveError(ValueError):
    """An archive entry would land outside its folder, is a link, or is too large: nothing extracted."""


@dataclass(frozen=True)
class ProgressEvent:
    """``done`` of ``total`` bytes of one phase ("download", "check", "convert", "extract") of the run."""

    phase: str
    item: str
    done: int
    total: int


@dataclass(frozen=True)
class HubFile:
    name: str
    size: int
    sha256: Optional[str]


@dataclass
class Report:
    """What a run did: files downloaded and converted, notes to show the user (one sentence each)."""

    downloaded: List[str] = field(default_factory=list)
    converted: List[str] = field(default_factory=list)
    extracted: int = 0
    notes: List[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.downloaded or self.converted or self.extracted)


# --------------------------------------------------------------------------------------------- environment
def hub_endpoint() -> str:
    """The hub URL: ``HF_ENDPOINT`` as it is now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def offline() -> bool:
    """``HF_HUB_OFFLINE`` set now or when huggingface_hub was imported."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or value.strip().upper() in ("1", "ON", "YES", "TRUE")


def manual_steps(folder: PathLike) -> str:
    """How to get the files by hand (used in the offline and hub-unreachable messages)."""
    names = ", ".join([OFFICIAL_FILES[MAIN], OFFICIAL_FILES[BACK_VIEW], ARCHIVE])
    return (f"download {names} from https://huggingface.co/{HF_REPO} on a machine with internet and put them "
            f"into {folder}; the next run converts and unpacks them there")


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


# --------------------------------------------------------------------------------------------- what a set lacks
def has_model(folder: Path, kind: str) -> bool:
    return (folder / kind / CONFIG_NAME).is_file()



def _kind_of(th: Path) -> str:
    """main or back_view: from the official name, else from the keys (memory-mapped, nothing copied)."""
    for kind, pattern in TH_PATTERNS.items():
        if pattern.match(th.name):
            return kind
    from .official_keys import detect_kind
    from .weights import load_official_state_dict

    return detect_kind(load_official_state_dict(th))


def placed_checkpoints(folder: Path) -> Dict[str, Path]:
    """``{kind: .th}`` the user put into the set folder (one per kind, else a clear error)."""
    found: Dict[str, List[Path]] = {}
    for th in sorted(p for p in folder.glob("*.th") if p.is_file()):
        found.setdefault(_kind_of(th), []).append(th)
    for kind, paths in found.items():
        if len(paths) > 1:
            raise ValueError(f"{folder} holds {len(paths)} {kind} checkpoints ({', '.join(p.name for p in paths)}); "
                             "keep one of them there so it is clear which one to convert")
    return {kind: paths[0] for kind, paths in found.items()}


@dataclass
class _Todo:
    """The steps one run takes for a set, decided before anything is written."""

    convert: Dict[str, Tuple[Path, bool]] = field(default_factory=dict)  # kind → (.th, downloaded by us)
    download: List[str] = field(default_factory=list)  # hub file names, in order
    archive: Optional[Tuple[Path, bool]] = None  # (zip, downloaded by us) to extract the cameras from

    @property
    def empty(self) -> bool:
        return not (self.convert or self.download or self.archive)


def _todo(folder: Path, official: bool) -> _Todo:
    todo = _Todo()
    work = folder / WORK_DIR
    missing = [k for k in (MAIN, BACK_VIEW) if not has_model(folder, k)]
    placed = placed_checkpoints(folder) if missing and folder.is_dir() else {}
    for kind in missing:
        fetched = work / OFFICIAL_FILES[kind]
        if kind in placed:
            todo.convert[kind] = (placed[kind], False)
        elif fetched.is_file():
            todo.convert[kind] = (fetched, True)
        elif official:
            todo.download.append(OFFICIAL_FILES[kind])
            todo.convert[kind] = (fetched, True)
    if not has_condition_folder(folder):
        without_cameras = _state(folder).get("archive_without_cameras")  # the hub's archive, when it had none
        if (folder / ARCHIVE).is_file() and not _is_recorded(folder / ARCHIVE, without_cameras):
            todo.archive = (folder / ARCHIVE, False)
        elif (work / ARCHIVE).is_file():
            todo.archive = (work / ARCHIVE, True)
        elif official and not without_cameras:
            todo.download.append(ARCHIVE)
            todo.archive = (work / ARCHIVE, True)
    return todo


def _state(folder: Path) -> dict:
    try:
        return json.loads((folder / WORK_DIR / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def _file_record(path: Path) -> dict:
    """Size and SHA-256 of a file, to know it again later (:func:`_is_recorded`)."""
    return {"size": path.stat().st_size, "sha256": sha256_file(path).hexdigest()}


def _is_recorded(path: Path, record) -> bool:
    """``path`` is the file ``record`` (:func:`_file_record`) describes: the size first, then the SHA-256."""
    if not isinstance(record, dict):  # ``True`` from earlier releases: which archive it was is not known
        return False
    try:
        return path.stat().st_size == record.get("size") and sha256_file(path).hexdigest() == record.get("sha256")
    except OSError:
        return False


# --------------------------------------------------------------------------------------------- lock
@contextlib.contextmanager
def _locked(work: Path) -> Iterator[None]:
    """One run per set folder, across threads of this process and across processes (CLI + ComfyUI)."""
    try:
        lock = FolderLock(work, "lock").acquire()
    except LockBusy as busy:
        if busy.this_process:
            raise DownloadError(f"another run is already getting the weights into {work.parent}; wait for it to "
                                "finish") from None
        raise DownloadError(f"another program (ComfyUI or the download command) is getting the weights into "
                            f"{work.parent}; wait for it to finish, then run again") from None
    except LockError as err:  # a lock path that is not our file, a folder we cannot write
        raise DownloadError(str(err)) from None
    try:
        yield
    finally:
        lock.release()  # deletes the file while still holding it: the next run makes a fresh one


# --------------------------------------------------------------------------------------------- the hub
def _hub_error(err: Exception, folder: Path) -> DownloadError:
    reason = " ".join(str(err).split())[:200] or type(err).__name__
    return DownloadError(f"cannot get the official weights from {hub_endpoint()}/{HF_REPO} ({type(err).__name__}: "
                         f"{reason}); check the internet connection and HF_ENDPOINT, or {manual_steps(folder)}")


def hub_files(names: List[str], folder: Path) -> Tuple[str, Dict[str, HubFile]]:
    """``(commit, {name: HubFile})``: sizes and LFS SHA-256 of ``names`` at the repo's current commit."""
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=hub_endpoint()).model_info(HF_REPO, files_metadata=True)
    except Exception as err:  # network and HTTP errors of every huggingface_hub version
        raise _hub_error(err, folder) from err
    siblings = {s.rfilename: s for s in info.siblings or []}
    lost = [n for n in names if n not in siblings]
    if lost:
        raise DownloadError(f"the hub repository {HF_REPO} at {hub_endpoint()} no longer lists {', '.join(lost)}; "
                            f"get them by hand: {manual_steps(folder)}")
    files = {}
    for name in names:
        s = siblings[name]
        size = s.lfs.size if s.lfs is not None else s.size
        if size is None:
            raise DownloadError(f"the hub gave no size for {name}; {manual_steps(folder)}")
        files[name] = HubFile(name, int(size), s.lfs.sha256.lower() if s.lfs is not None else None)
    return info.sha, files


def _file_location(name: str, commit: str, folder: Path) -> Tuple[str, Optional[str], Optional[int]]:
    """``(url to GET, sha256 from the ETag when it is one, size)`` from a HEAD on ``/resolve/``."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(HF_REPO, name, revision=commit, endpoint=hub_endpoint())
    # Older huggingface_hub releases swap in ``endpoint`` only when the URL starts with the endpoint they read at
    # import: pin the one of now (``HF_ENDPOINT`` set after import, a mirror) whatever the release did.
    path = f"/{HF_REPO}/resolve/"
    url = hub_endpoint() + url[url.index(path):]
    try:
        meta = get_hf_file_metadata(url)
    except Exception as err:  # network and HTTP errors
        raise _hub_error(err, folder) from err
    etag = (meta.etag or "").lower()
    return meta.location or url, etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None, meta.size


# --------------------------------------------------------------------------------------------- one download
class _Cancelled(Exception):
    """Wraps what our side of a write raised (a Cancel from the progress callback, a full disk), so it is
    raised as it is instead of being retried like a network error."""

    def __init__(self, inner: BaseException):
        super().__init__(str(inner))
        self.inner = inner


class _CountingFile:
    """The partial file as ``http_get`` sees it: every write is hashed and reported (a raise there stops it)."""

    def __init__(self, f, hasher, report: Callable[[int], None]):
        self._f, self._hasher, self._report = f, hasher, report
        self.rewound = False  # the server ignored our Range: the hash is recomputed from the file

    def write(self, data) -> int:
        try:
            n = self._f.write(data)
            self._hasher.update(data)
            self._report(len(data))
        except BaseException as err:
            raise _Cancelled(err) from None
        return n

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, *args):
        self.rewound = True
        return self._f.seek(*args)

    def truncate(self, *args):
        self.rewound = True
        return self._f.truncate(*args)

    def flush(self) -> None:
        self._f.flush()


def _resumable_bytes(part: Path, meta: Path, hub: HubFile) -> int:
    """Bytes of an earlier partial download of this very file (same SHA-256 and size), else 0."""
    try:
        recorded = json.loads(meta.read_text())
        size = part.stat().st_size
    except (OSError, ValueError):
        return 0
    same = recorded.get("sha256") == hub.sha256 and recorded.get("size") == hub.size
    return size if same and size <= hub.size else 0


def _download(hub: HubFile, commit: str, folder: Path, progress: "_Phase") -> None:
    """Downloads ``hub`` into ``folder/.download/<name>``, verified; continues an earlier ``.part`` of the same file."""
    work = folder / WORK_DIR
    part, meta = work / (hub.name + ".part"), work / (hub.name + ".part.json")
    resume = _resumable_bytes(part, meta, hub)
    if resume == 0:
        with open(part, "wb"):  # our own partial file (of another revision, or none): start over
            pass
        write_text_atomic(meta, json.dumps({"sha256": hub.sha256, "size": hub.size}))
    hasher = hashlib.sha256()
    if resume:
        check = _Phase(progress.callback, "check", hub.name, resume)
        sha256_file(part, hasher, check.advance)
    progress.advance(0)
    attempts = 0
    while True:
        have = part.stat().st_size
        url, etag_sha, size = _file_location(hub.name, commit, folder)
        expected_sha = hub.sha256 or etag_sha
        if expected_sha is None:
            raise DownloadError(f"the hub gives no SHA-256 for {hub.name}, so a download could not be verified; "
                                f"{manual_steps(folder)}")
        if size is not None and size != hub.size:
            raise DownloadError(f"the hub reports two sizes for {hub.name} ({size} and {hub.size} bytes); "
                                "run again in a few minutes")
        try:
            with open(part, "ab") as f:
                sink = _CountingFile(f, hasher, progress.advance)
                _http_get(url, sink, have, hub.size, hub.name)
            break
        except _Cancelled as cancel:
            raise cancel.inner from None
        except Exception as err:  # network errors that outlived http_get's own retries
            attempts = 0 if part.stat().st_size > have else attempts + 1
            if attempts >= 3:
                raise DownloadError(f"downloading {hub.name} failed ({type(err).__name__}: "
                                    f"{' '.join(str(err).split())[:160]}); {part.stat().st_size} of {hub.size} bytes "
                                    "are kept, run again to continue") from err
            hasher = sha256_file(part)  # the partial file is the truth: re-hash what it holds
            time.sleep(1.0)
    if sink.rewound:
        hasher = sha256_file(part)
    digest, got = hasher.hexdigest(), part.stat().st_size
    if got != hub.size or digest != expected_sha:
        part.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        raise ChecksumError(f"{hub.name} arrived damaged (SHA-256 {digest[:12]}…, {got} bytes; the hub says "
                            f"{expected_sha[:12]}…, {hub.size} bytes) and was removed; run again to download it anew")
    os.replace(part, work / hub.name)
    meta.unlink(missing_ok=True)


def _http_get(url: str, sink: _CountingFile, resume: int, size: int, name: str) -> None:
    """huggingface_hub's streaming GET: auth headers for the hub only, Range from ``resume``, size checked."""
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers() if url.startswith(hub_endpoint()) else {}
    headers["Accept-Encoding"] = "identity"
    http_get(url, sink, resume_size=resume, headers=headers, expected_size=size, displayed_filename=name)


# --------------------------------------------------------------------------------------------- progress
class _Phase:
    """Running byte count of one phase, reported through the user's callback."""

    def __init__(self, callback: Optional[ProgressCallback], phase: str, item: str, total: int):
        self.callback, self.phase, self.item, self.total, self.done = callback, phase, item, max(0, total), 0

    def advance(self, n: int) -> None:
        self.done = min(self.total, self.done + n)
        if self.callback is not None:
            self.callback(ProgressEvent(self.phase, self.item, self.done, self.total))

    def set(self, done: int) -> None:
        self.done = 0
        self.advance(done)


# --------------------------------------------------------------------------------------------- conversion
def _written_since(folder: Path, start: float) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for p in folder.iterdir():
            with contextlib.suppress(OSError):
                st = p.stat()
                if stat.S_ISREG(st.st_mode) and st.st_mtime >= start:
                    total += st.st_size
    return total


def converted_size(th_bytes: int) -> int:
    """Estimated size of the fp16 conversion of an fp32 checkpoint (half; CLIP is dropped)."""
    return th_bytes // 2


def _convert(th: Path, folder: Path, kind: str, phase: _Phase) -> Optional[BaseException]:
    """``convert_checkpoint`` to fp16, with progress from the bytes it writes (read by a watcher thread).

    A cancel raised by the progress callback is held until the file is converted (the
    converter cannot stop halfway) and returned, for the caller to raise once it has
    recorded the finished conversion.
    """
    import torch

    from .weights import convert_checkpoint

    out = folder / kind
    out.mkdir(parents=True, exist_ok=True)
    base, start, expected = phase.done, time.time() - 1.0, converted_size(th.stat().st_size)
    stop, held = threading.Event(), []

    def watch() -> None:
        while not stop.wait(0.5):
            try:
                phase.set(base + min(_written_since(out, start), max(0, expected - 1)))
            except BaseException as err:  # a Cancel from the callback
                held.append(err)
                return

    watcher = threading.Thread(target=watch, name="diffstyle360-convert-progress", daemon=True)
    watcher.start()
    try:
        convert_checkpoint(th, out, kind=kind, dtype=torch.float16)
    finally:
        stop.set()
        watcher.join()
    if held:
        return held[0]
    try:
        phase.set(base + expected)
    except BaseException as err:  # a Cancel pressed just now: the conversion is done all the same
        return err
    return None


# --------------------------------------------------------------------------------------------- cameras
def _unsafe_reason(info: zipfile.ZipInfo) -> Optional[str]:
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name) or "\0" in name:
        return "an absolute or Windows path"
    if any(part == ".." for part in PurePosixPath(name).parts):
        return "a path outside its folder"
    return None


def camera_members(infos: List[zipfile.ZipInfo]) -> List[zipfile.ZipInfo]:
    """The archive's camera renders: images in the first of CONDITION_SUBDIRS found (most images wins a tie)."""
    for sub in CONDITION_SUBDIRS:
        tail = PurePosixPath(sub).parts
        groups: Dict[str, List[zipfile.ZipInfo]] = {}
        for info in infos:
            path = PurePosixPath(info.filename)
            if info.is_dir() or path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
                continue
            if path.parent.parts[-len(tail):] == tail:
                groups.setdefault(str(path.parent), []).append(info)
        if groups:
            best = max(groups.values(), key=lambda g: (len(g), -len(g[0].filename)))
            return sorted(best, key=lambda i: i.filename)
    return []


def extract_cameras(archive: Path, folder: Path, phase_callback: Optional[ProgressCallback] = None) -> int:
    """Unpack the camera renders of ``archive`` into ``folder/cam_condition/sphere32``; returns how many.

    The whole listing is checked first: an entry that is a link, an absolute path or
    one with ``..`` refuses the archive (nothing extracted). Images are copied with
    their declared sizes as hard limits (a zip bomb stops at the limit), into a
    temporary folder beside the target, then renamed into place; 0 when the
    archive holds no camera set.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise UnsafeArchiveError(f"{archive} is not a readable zip archive ({err}); delete it and run again") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ARCHIVE_ENTRIES:
            raise UnsafeArchiveError(f"{archive} has {len(infos)} entries (limit {MAX_ARCHIVE_ENTRIES}); nothing "
                                     "was extracted")
        for info in infos:
            reason = _unsafe_reason(info)
            if reason is not None:
                raise UnsafeArchiveError(f"{archive} holds {info.filename!r}, {reason}; nothing was extracted from "
                                         f"this archive, put the 32 camera renders into {folder / CAMERA_DIR} by hand")
        members = camera_members(infos)
        if not members:
            return 0
        big = [m.filename for m in members if m.file_size > MAX_IMAGE_BYTES]
        total = sum(m.file_size for m in members)
        if big or total > MAX_CAMERA_BYTES:
            raise UnsafeArchiveError(f"{archive}: camera renders larger than the limits ({big[:2] or _size(total)}); "
                                     "nothing was extracted")
        _check_disk(folder, total, f"unpacking the camera set ({_size(total)})")
        phase = _Phase(phase_callback, "extract", archive.name, total)
        target = folder / CAMERA_DIR
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".sphere32-"))
        try:
            for info in members:
                _copy_member(zf, info, staging / PurePosixPath(info.filename).name, phase)
            if not target.exists():
                os.replace(staging, target)
            else:  # an existing folder without renders: add ours, overwrite nothing
                for p in sorted(staging.iterdir()):
                    if not (target / p.name).exists():
                        os.replace(p, target / p.name)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)  # our own temporary folder
    return len(members)


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, phase: _Phase) -> None:
    limit = info.file_size
    copied = 0
    with zf.open(info) as src, open(dest, "wb") as out:
        while True:
            block = src.read(min(2**20, limit - copied + 1))  # one byte past the limit shows a lying header
            if not block:
                break
            copied += len(block)
            if copied > limit:
                raise UnsafeArchiveError(f"{info.filename} unpacks to more than its declared {limit} bytes; "
                                         "nothing was extracted")
            out.write(block)
            phase.advance(len(block))


# --------------------------------------------------------------------------------------------- disk space
def _existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(_existing(folder)).free


def _check_disk(folder: Path, needed: int, what: str) -> None:
    free = free_bytes(folder)
    if needed + DISK_MARGIN > free:
        raise DiskSpaceError(
            f"not enough free disk space in {_existing(folder)}: {what} needs {_size(needed + DISK_MARGIN)}, only "
            f"{_size(free)} are free; free up space or put the weights on another disk (--weights-dir, or a "
            "`diffstyle360:` folder in ComfyUI's extra_model_paths.yaml)")


def peak_bytes(download: int, conversions: List[Tuple[int, int]], archive: Tuple[int, int] = (0, 0)) -> int:
    """Most extra disk the run holds at once: the downloads, then the archive unpacked (``(added, freed)``), then
    each conversion ``(written, freed afterwards)`` in turn."""
    used = peak = download
    for added, freed in [archive] + conversions:
        used += added
        peak = max(peak, used)
        used -= freed
    return peak


# --------------------------------------------------------------------------------------------- the run
def ensure_weight_set(folder: PathLike, *, official: bool = True, keep_originals: bool = False,
                      progress: Optional[ProgressCallback] = None) -> Report:
    """Make ``folder`` a complete weight set: convert what was put there, download what is missing.

    ``official``: download missing files from the hub (else only convert and unpack
    what is in the folder). ``keep_originals``: keep downloaded ``.th`` files and the
    archive (moved into ``folder``) instead of deleting them once used. ``progress``
    gets :class:`ProgressEvent` s in bytes. Raises :class:`OfflineError`,
    :class:`DiskSpaceError` (before anything is written), :class:`ChecksumError`,
    :class:`UnsafeArchiveError` or :class:`DownloadError`, each one sentence.
    """
    folder = Path(os.fspath(folder)).expanduser()
    report = Report()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"weight set {folder} is a file; give a folder")
    if _plan(folder, official, report.notes).empty:
        return report
    work = folder / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    try:
        with _locked(work):
            todo = _plan(folder, official, [])  # again, note given: a run that held the lock may have done it all
            if not todo.empty:
                _run(folder, todo, keep_originals, progress, report)
    finally:
        with contextlib.suppress(OSError):
            work.rmdir()  # only when empty: nothing else of ours is left
    return report


def _plan(folder: Path, official: bool, notes: List[str]) -> _Todo:
    """What to do; offline, a missing model is an error and a missing camera set a note."""
    todo = _todo(folder, official)
    if todo.download and offline():
        if any(n != ARCHIVE for n in todo.download):
            raise OfflineError(f"HF_HUB_OFFLINE is set, so the official weights cannot be downloaded into {folder}: "
                               f"{manual_steps(folder)}")
        notes.append(f"HF_HUB_OFFLINE is set, so the camera set ({ARCHIVE}) was not downloaded; put {ARCHIVE} into "
                     f"{folder}, or connect your own condition renders")
        todo.download.remove(ARCHIVE)
        todo.archive = None
    return todo


def _run(folder: Path, todo: _Todo, keep: bool, progress: Optional[ProgressCallback], report: Report) -> None:
    work = folder / WORK_DIR
    hub: Dict[str, HubFile] = {}
    commit = ""
    if todo.download:
        commit, hub = hub_files(todo.download, folder)
    sizes = {n: f.size for n, f in hub.items()}
    for th, _ours in todo.convert.values():
        if th.is_file():
            sizes[th.name] = th.stat().st_size
    remaining = {n: f.size - _resumable_bytes(work / (n + ".part"), work / (n + ".part.json"), f)
                 for n, f in hub.items()}
    archive_cost = (0, 0)
    if todo.archive is not None:
        _zip, ours = todo.archive
        archive_cost = (64 * 2**20, sizes.get(ARCHIVE, 0) if ours and not keep else 0)  # renders: tens of MB
    conversions = [(converted_size(sizes[th.name]), sizes[th.name] if ours and not keep else 0)
                   for th, ours in todo.convert.values()]
    need = peak_bytes(sum(remaining.values()), conversions, archive_cost)
    _check_disk(folder, need, f"getting the weights (downloads {_size(sum(remaining.values()))}, fp16 conversion "
                              f"{_size(sum(c for c, _ in conversions))})")

    phase = _Phase(progress, "download", "", sum(remaining.values()))
    for name in todo.download:
        phase.item = name
        _download(hub[name], commit, folder, phase)
        report.downloaded.append(name)

    if todo.archive is not None:
        archive, ours = todo.archive
        count = extract_cameras(archive, folder, progress)
        report.extracted = count
        if count == 0:
            report.notes.append(
                f"{ARCHIVE} holds no camera-condition renders ({CAMERA_DIR}/*.png), so {folder} has no camera set; "
                f"put the 32 official renders into {folder / CAMERA_DIR}, or connect your own condition images "
                "(Turntable Camera's conditions input, or --conditions on the command line)")
            if ours:  # the hub's archive: not downloaded again, and not unpacked again when kept (moved into folder)
                write_text_atomic(work / "state.json",
                                  json.dumps({**_state(folder), "archive_without_cameras": _file_record(archive)}))
        if ours:
            _finish_original(archive, folder, keep)

    phase = _Phase(progress, "convert", "", sum(c for c, _ in conversions))
    for kind, (th, ours) in todo.convert.items():
        phase.item = th.name
        cancel = _convert(th, folder, kind, phase)
        report.converted.append(th.name)
        if ours:
            _finish_original(th, folder, keep)
        if cancel is not None:
            raise cancel


def _finish_original(path: Path, folder: Path, keep: bool) -> None:
    """A downloaded original we are done with: moved into the set folder (kept), or deleted."""
    if keep:
        dest = folder / path.name
        if not dest.exists():
            os.replace(path, dest)
            return
    path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- sets in a models folder
def target_folder(roots: List[PathLike], name: str = OFFICIAL_SET) -> Path:
    """Where the set ``name`` lives or will be downloaded: the first root holding it, else the first root."""
    if not roots:
        raise ValueError("no models folder to put the weights into")
    for root in roots:
        if (Path(os.fspath(root)) / name).is_dir():
            return Path(os.fspath(root)) / name
    return Path(os.fspath(roots[0])) / name


def pending_sets(roots: List[PathLike]) -> Dict[str, Path]:
    """Folders (one level below each root) holding only what a run converts: a ``.th`` or ``inference_data.zip``."""
    found: Dict[str, Path] = {}
    for root in roots:
        root = Path(os.fspath(root))
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder.name in found:
                continue
            if any(folder.glob("*.th")) or (folder / ARCHIVE).is_file():
                found[folder.name] = folder
    return found
