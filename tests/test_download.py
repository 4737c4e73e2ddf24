"""Weights on demand (diffstyle360_core/download.py) against a fake Hugging Face hub on 127.0.0.1.

The fake hub implements what huggingface_hub calls: the model-info API
(``/api/models/<repo>[/revision/<rev>]?blobs=true``), ``HEAD``/``GET`` on
``/<repo>/resolve/<rev>/<file>`` with ETag / X-Repo-Commit / X-Linked-Etag /
X-Linked-Size headers and Range requests. It serves the tiny official-format
checkpoints of ``make_tiny`` under the official names and a tiny
``inference_data.zip``, and can drop a connection mid-file or flip a byte.
Nothing here reaches the internet.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
import shutil
import stat
import sys
import threading
import zipfile
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch

from diffstyle360_core import download as dl
from diffstyle360_core import loading
from diffstyle360_core.config import BACK_VIEW, MAIN
from diffstyle360_core.official_keys import HF_REPO, OFFICIAL_FILES
from node_runner import call, run
from test_folder_lock import hold_in_another_process

MAIN_TH, BACK_TH = OFFICIAL_FILES[MAIN], OFFICIAL_FILES[BACK_VIEW]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
Request = namedtuple("Request", "method path range")


# --------------------------------------------------------------------------------------------- the fake hub
class FakeHub:
    """A ThreadingHTTPServer that answers like huggingface.co for one repository."""

    def __init__(self, files: dict):
        self.files = dict(files)
        self.requests: list = []
        self.drop_once: dict = {}  # name → bytes sent before the connection is cut (first GET only)
        self.corrupt: set = set()  # names served with one byte flipped (right length)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep the test output clean
                pass

            def do_HEAD(self):
                hub._answer(self, head=True)

            def do_GET(self):
                hub._answer(self, head=False)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a client that hung up mid-file is expected here
                if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def sha(self, name: str) -> str:
        return hashlib.sha256(self.files[name]).hexdigest()

    def gets(self, name: str) -> list:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + name)]

    # ---- answers
    def _answer(self, h: BaseHTTPRequestHandler, head: bool):
        path = urlsplit(h.path).path
        self.requests.append(Request(h.command, path, h.headers.get("Range")))
        api = re.fullmatch(rf"/api/models/{re.escape(HF_REPO)}(?:/revision/[^/]+)?", path)
        if api:
            return self._json(h, self._model_info(), head)
        resolve = re.fullmatch(rf"/{re.escape(HF_REPO)}/resolve/([^/]+)/(.+)", path)
        if resolve and resolve.group(2) in self.files:
            return self._file(h, resolve.group(2), head)
        body = json.dumps({"error": "Repository Not Found"}).encode()
        h.send_response(404)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.send_header("X-Error-Code", "EntryNotFound")
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _model_info(self) -> dict:
        return {
            "id": HF_REPO, "modelId": HF_REPO, "sha": COMMIT, "private": False, "disabled": False, "tags": [],
            "siblings": [{"rfilename": name, "size": len(data), "blobId": hashlib.sha1(data).hexdigest(),
                          "lfs": {"sha256": self.sha(name), "size": len(data), "pointerSize": 134}}
                         for name, data in self.files.items()],
        }

    def _json(self, h, data, head):
        body = json.dumps(data).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _file(self, h, name: str, head: bool):
        data = self.files[name]
        if name in self.corrupt:
            data = bytearray(data)
            data[len(data) // 2] ^= 0xFF
            data = bytes(data)
        start = 0
        wanted = h.headers.get("Range")
        if wanted:
            start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1))
        body = data[start:]
        h.send_response(206 if wanted else 200)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Accept-Ranges", "bytes")
        if wanted:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("ETag", f'"{self.sha(name)}"')
        h.send_header("X-Linked-Etag", f'"{self.sha(name)}"')
        h.send_header("X-Linked-Size", str(len(data)))
        h.send_header("X-Repo-Commit", COMMIT)
        h.end_headers()
        if head:
            return
        cut = self.drop_once.pop(name, None)
        if cut is not None:
            h.wfile.write(body[:cut])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)  # the peer sees the body end early
            return
        h.wfile.write(body)


# --------------------------------------------------------------------------------------------- fixtures
def camera_zip(cams: Path, extra: dict = None, with_cameras: bool = True) -> bytes:
    """A tiny inference_data.zip: sample portraits plus (optionally) cam_condition/sphere32/*.png."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("inference_data/pexels/0001.jpg", b"not really a portrait")
        if with_cameras:
            for png in sorted(cams.glob("*.png")):
                z.write(png, f"inference_data/cam_condition/sphere32/{png.name}")
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return buf.getvalue()


def official_hub_files(tiny: Path) -> dict:
    """The hub's files under their official names, made from a ``make_tiny`` set (also serve_fake_hub.py's)."""
    return {
        MAIN_TH: (tiny / "original" / "model_state-tiny.th").read_bytes(),
        BACK_TH: (tiny / "original" / "back_head-tiny.th").read_bytes(),
        dl.ARCHIVE: camera_zip(tiny / "cam_condition" / "sphere32"),
    }


@pytest.fixture(scope="module")
def hub_files(tiny_weights):
    return official_hub_files(Path(tiny_weights))


@pytest.fixture
def hub(hub_files, monkeypatch, tmp_path):
    server = FakeHub(hub_files)
    monkeypatch.setenv("HF_ENDPOINT", server.url)  # read at call time by download.hub_endpoint()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    import huggingface_hub.constants as constants

    # huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE once at import: point those copies here too.
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield server
    server.close()


def events_of(events, phase):
    return [e for e in events if e.phase == phase]


def assert_same_weights(ours, reference):
    """The fp16 conversion of the downloaded file equals make-tiny's fp32 conversion within fp16 rounding."""
    a, b = ours.state_dict(), reference.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        # fp16 keeps 11 significant bits: relative error ≤ 2^-11 ≈ 4.9e-4, plus subnormals near 0
        torch.testing.assert_close(a[key].float(), b[key].float(), rtol=1e-3, atol=1e-4, msg=key)


# --------------------------------------------------------------------------------------------- tests
def test_fresh_download_converts_verifies_and_loads(hub, hub_files, tiny_weights, tmp_path):
    folder = tmp_path / "models" / dl.OFFICIAL_SET
    events = []
    report = dl.ensure_weight_set(folder, progress=events.append)

    assert report.downloaded == [MAIN_TH, BACK_TH, dl.ARCHIVE]
    assert report.converted == [MAIN_TH, BACK_TH] and report.extracted == 32 and not report.notes
    # originals removed (keep_originals=False), our working folder gone, nothing else left behind
    assert sorted(p.name for p in folder.iterdir()) == ["back_view", "cam_condition", "main"]
    assert sorted(p.name for p in (folder / "cam_condition" / "sphere32").iterdir()) == \
        sorted(p.name for p in (Path(tiny_weights) / "cam_condition" / "sphere32").iterdir())
    # progress in bytes: the download phase counts every byte once and ends at its total
    down = events_of(events, "download")
    total = sum(len(d) for d in hub_files.values())
    assert down[-1].done == down[-1].total == total
    assert all(a.done <= b.done for a, b in itertools.pairwise(down))
    conv = events_of(events, "convert")
    assert conv[-1].done == conv[-1].total > 0
    # the converted weights are fp16 and equal the reference conversion within fp16 rounding
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(folder / "main" / "unet.safetensors").values()} == {torch.float16}
    main = loading.load_main(folder, device="cpu", dtype="fp32")
    assert_same_weights(main, loading.load_main(tiny_weights, device="cpu", dtype="fp32"))
    back = loading.load_back_view(folder, device="cpu", dtype="fp32")
    assert_same_weights(back, loading.load_back_view(tiny_weights, device="cpu", dtype="fp32"))
    cams = loading.load_cameras(folder, main.config.image_size)
    assert len(cams) == 32
    # files go straight into the set folder: nothing large lands in huggingface_hub's cache
    cache = Path(os.environ["HF_HOME"])
    assert not [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size > 1_000_000]
    # a second run has nothing to do and asks the hub nothing
    before = len(hub.requests)
    assert not dl.ensure_weight_set(folder).changed
    assert len(hub.requests) == before


def test_connection_cut_mid_file_resumes_with_a_range_request(hub, hub_files, tmp_path):
    folder = tmp_path / dl.OFFICIAL_SET
    cut = 25_000_000  # huggingface_hub writes 10 MB chunks: two reach the file before the cut
    hub.drop_once[MAIN_TH] = cut
    dl.ensure_weight_set(folder)
    gets = hub.gets(MAIN_TH)
    assert gets[0].range is None and len(gets) == 2
    start = int(re.fullmatch(r"bytes=(\d+)-", gets[1].range).group(1))
    assert 0 < start <= cut  # continued where the cut left it, not from byte 0
    assert loading.read_config(folder, MAIN).kind == MAIN


class Cancel(Exception):
    """Stands in for the host's interrupt (Cancel in ComfyUI, Ctrl-C on the command line)."""


def test_cancelled_download_continues_in_the_next_run(hub, hub_files, tmp_path):
    folder = tmp_path / dl.OFFICIAL_SET

    def cancel_after_10mb(event):
        if event.phase == "download" and event.done >= 10_000_000:
            raise Cancel()

    with pytest.raises(Cancel):
        dl.ensure_weight_set(folder, progress=cancel_after_10mb)
    part = folder / dl.WORK_DIR / (MAIN_TH + ".part")
    kept = part.stat().st_size
    assert 10_000_000 <= kept < len(hub_files[MAIN_TH])
    assert not (folder / "main").exists()

    events = []
    report = dl.ensure_weight_set(folder, progress=events.append)
    assert report.downloaded == [MAIN_TH, BACK_TH, dl.ARCHIVE]
    assert hub.gets(MAIN_TH)[-1].range == f"bytes={kept}-"
    checked = events_of(events, "check")  # the kept bytes are hashed again before they are trusted
    assert checked[-1].done == kept
    assert events_of(events, "download")[-1].total == sum(len(d) for d in hub_files.values()) - kept
    assert not part.exists() and loading.read_config(folder, BACK_VIEW).kind == BACK_VIEW


def test_cancel_during_conversion_keeps_the_converted_model_and_stops_after_it(hub, tmp_path):
    folder = tmp_path / dl.OFFICIAL_SET

    def cancel_while_converting(event):
        if event.phase == "convert":
            raise Cancel()

    with pytest.raises(Cancel):  # raised once the file being converted is done (the converter cannot stop halfway)
        dl.ensure_weight_set(folder, progress=cancel_while_converting)
    assert loading.read_config(folder, MAIN).kind == MAIN and not (folder / BACK_VIEW).exists()
    assert not (folder / dl.WORK_DIR / MAIN_TH).exists()  # its original is done with, as after any conversion
    assert (folder / dl.WORK_DIR / BACK_TH).is_file()  # verified download waiting for its conversion
    before = len(hub.requests)
    report = dl.ensure_weight_set(folder)
    assert report.downloaded == [] and report.converted == [BACK_TH] and len(hub.requests) == before


def test_a_failing_disk_write_is_raised_as_it_is_not_retried_like_the_network(hub, tmp_path):
    def disk_full(event):
        if event.phase == "download" and event.done > 0:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left on device") as err:
        dl.ensure_weight_set(tmp_path / dl.OFFICIAL_SET, progress=disk_full)
    assert not isinstance(err.value, dl.DownloadError) and len(hub.gets(MAIN_TH)) == 1


def test_a_set_another_run_is_getting_is_refused_at_once_in_one_sentence(hub, tmp_path):
    """One run per set: another thread of this process (a second ComfyUI prompt) or another program."""
    folder = tmp_path / dl.OFFICIAL_SET
    work = folder / dl.WORK_DIR
    work.mkdir(parents=True)
    with dl._locked(work), pytest.raises(dl.DownloadError) as err:  # a run in this process holds the set
        dl.ensure_weight_set(folder)
    assert str(err.value) == f"another run is already getting the weights into {folder}; wait for it to finish"
    holder = hold_in_another_process(work, "lock")
    try:
        with pytest.raises(dl.DownloadError) as err:
            dl.ensure_weight_set(folder)
    finally:
        holder.kill()
        holder.wait(10)
    assert str(err.value) == (f"another program (ComfyUI or the download command) is getting the weights into "
                              f"{folder}; wait for it to finish, then run again")
    assert hub.requests == [] and sorted(p.name for p in folder.rglob("*")) == [dl.WORK_DIR, "lock"]
    report = dl.ensure_weight_set(folder)  # the killed holder's lock is free: this run goes on
    assert report.downloaded and not work.exists()  # and leaves no lock file behind


def test_corrupted_download_is_detected_and_removed(hub, hub_files, tmp_path):
    folder = tmp_path / dl.OFFICIAL_SET
    hub.corrupt.add(BACK_TH)
    with pytest.raises(dl.ChecksumError) as err:
        dl.ensure_weight_set(folder)
    message = str(err.value)
    assert BACK_TH in message and "run again" in message and "\n" not in message
    work = folder / dl.WORK_DIR
    assert not (work / (BACK_TH + ".part")).exists() and not (work / BACK_TH).exists()
    assert (work / MAIN_TH).is_file()  # the verified file is kept: the next run does not fetch it again
    assert not (folder / "main").exists()  # nothing converted from a run that failed

    hub.corrupt.clear()
    before = len(hub.gets(MAIN_TH))
    report = dl.ensure_weight_set(folder)
    assert report.downloaded == [BACK_TH, dl.ARCHIVE] and len(hub.gets(MAIN_TH)) == before
    assert report.converted == [MAIN_TH, BACK_TH]


def test_offline_mode_says_the_manual_steps_in_one_sentence(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / dl.OFFICIAL_SET
    with pytest.raises(dl.OfflineError) as err:
        dl.ensure_weight_set(folder)
    message = str(err.value)
    assert message.count(". ") == 0 and "\n" not in message
    for needed in ("HF_HUB_OFFLINE", MAIN_TH, BACK_TH, dl.ARCHIVE, f"https://huggingface.co/{HF_REPO}", str(folder)):
        assert needed in message
    assert hub.requests == [] and not folder.exists()


def test_offline_a_set_lacking_only_the_cameras_says_why_they_were_not_downloaded(hub, tiny_weights, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / dl.OFFICIAL_SET
    for kind in (MAIN, BACK_VIEW):
        shutil.copytree(Path(tiny_weights) / kind, folder / kind)
    report = dl.ensure_weight_set(folder)
    (note,) = report.notes
    assert note.startswith("HF_HUB_OFFLINE is set, so the camera set") and dl.ARCHIVE in note and str(folder) in note
    assert not report.changed and hub.requests == [] and sorted(p.name for p in folder.iterdir()) == [BACK_VIEW, MAIN]


def test_full_disk_is_refused_before_downloading(hub, hub_files, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5 * 10**6, 5 * 10**6))
    folder = tmp_path / dl.OFFICIAL_SET
    with pytest.raises(dl.DiskSpaceError) as err:
        dl.ensure_weight_set(folder)
    message = str(err.value)
    downloads = sum(len(d) for d in hub_files.values())
    amount, unit = re.search(r"needs ([\d.]+) (MB|GB)", message).groups()
    assert float(amount) * {"MB": 1e6, "GB": 1e9}[unit] >= downloads  # says how much: at least the downloads
    assert "5.0 MB are free" in message and "\n" not in message
    assert [r for r in hub.requests if "/resolve/" in r.path] == []  # nothing downloaded


def test_peak_disk_counts_originals_freed_after_each_conversion():
    # downloads 30, unpack +1 then the archive (5) is freed, convert +10 (free 12), convert +8 (free 10)
    assert dl.peak_bytes(30, [(10, 12), (8, 10)], (1, 5)) == 36
    assert dl.peak_bytes(30, [(10, 0), (8, 0)], (1, 0)) == 49  # originals kept: everything adds up


def test_archive_with_a_path_outside_the_set_is_refused(hub, hub_files, tiny_weights, tmp_path):
    cams = Path(tiny_weights) / "cam_condition" / "sphere32"
    hub.files[dl.ARCHIVE] = camera_zip(cams, extra={"inference_data/../../evil.png": b"x"})
    folder = tmp_path / "models" / dl.OFFICIAL_SET
    with pytest.raises(dl.UnsafeArchiveError) as err:
        dl.ensure_weight_set(folder)
    assert "a path outside its folder" in str(err.value) and "\n" not in str(err.value)
    assert not list(tmp_path.rglob("evil.png"))
    assert not (folder / "cam_condition").exists()  # nothing extracted


def test_symlink_entries_and_oversized_members_are_refused(tiny_weights, tmp_path):
    cams = Path(tiny_weights) / "cam_condition" / "sphere32"
    link = zipfile.ZipInfo("inference_data/cam_condition/sphere32/link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = tmp_path / "links.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(link, "/etc/passwd")
    with pytest.raises(dl.UnsafeArchiveError, match="symbolic link"):
        dl.extract_cameras(archive, tmp_path / "set")
    assert not (tmp_path / "set").exists()

    big = tmp_path / "big.zip"
    big.write_bytes(camera_zip(cams))
    limit = dl.MAX_IMAGE_BYTES
    try:
        dl.MAX_IMAGE_BYTES = 100  # the tiny renders are larger than this
        with pytest.raises(dl.UnsafeArchiveError, match="limits"):
            dl.extract_cameras(big, tmp_path / "set2")
    finally:
        dl.MAX_IMAGE_BYTES = limit
    assert not (tmp_path / "set2" / "cam_condition" / "sphere32").exists()


def test_archive_without_cameras_says_so_and_what_works_instead(hub, tiny_weights, tmp_path):
    hub.files[dl.ARCHIVE] = camera_zip(Path(tiny_weights), with_cameras=False)
    folder = tmp_path / dl.OFFICIAL_SET
    report = dl.ensure_weight_set(folder)
    assert report.converted == [MAIN_TH, BACK_TH] and report.extracted == 0
    (note,) = report.notes
    assert "holds no camera-condition renders" in note and "conditions" in note and "\n" not in note
    # remembered: the next run neither downloads the archive again nor repeats the work
    before = len(hub.requests)
    assert dl.ensure_weight_set(folder) == dl.Report() and len(hub.requests) == before


def test_a_kept_archive_without_cameras_is_not_unpacked_again_but_another_one_put_there_is(hub, tiny_weights,
                                                                                          tmp_path):
    hub.files[dl.ARCHIVE] = camera_zip(Path(tiny_weights), with_cameras=False)
    folder = tmp_path / dl.OFFICIAL_SET
    report = dl.ensure_weight_set(folder, keep_originals=True)
    assert report.extracted == 0 and len(report.notes) == 1 and (folder / dl.ARCHIVE).is_file()
    before = len(hub.requests)
    assert dl.ensure_weight_set(folder, keep_originals=True) == dl.Report() and len(hub.requests) == before
    # another archive put there (one with the renders) is unpacked
    (folder / dl.ARCHIVE).write_bytes(camera_zip(Path(tiny_weights) / "cam_condition" / "sphere32"))
    report = dl.ensure_weight_set(folder, keep_originals=True)
    assert report.extracted == 32 and not report.notes and len(hub.requests) == before


def test_hand_placed_files_are_converted_and_never_deleted(tiny_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing may be downloaded
    folder = tmp_path / "my_set"
    folder.mkdir()
    tiny = Path(tiny_weights)
    shutil.copy(tiny / "original" / "model_state-tiny.th", folder / "model_state-340000.th")
    shutil.copy(tiny / "original" / "back_head-tiny.th", folder / "weights_of_the_back.th")  # found by its keys
    (folder / dl.ARCHIVE).write_bytes(camera_zip(tiny / "cam_condition" / "sphere32"))
    assert dl.pending_sets([tmp_path]) == {"my_set": folder}

    report = dl.ensure_weight_set(folder, official=False)
    assert report.downloaded == [] and sorted(report.converted) == ["model_state-340000.th", "weights_of_the_back.th"]
    for name in ("model_state-340000.th", "weights_of_the_back.th", dl.ARCHIVE):
        assert (folder / name).is_file()  # the user's files stay
    assert loading.read_config(folder, BACK_VIEW).kind == BACK_VIEW
    assert len(loading.load_cameras(folder, 64)) == 32
    assert dl.ensure_weight_set(folder, official=False) == dl.Report()  # nothing left to do


def test_keep_originals_moves_the_downloaded_files_into_the_set(hub, hub_files, tmp_path):
    folder = tmp_path / dl.OFFICIAL_SET
    dl.ensure_weight_set(folder, keep_originals=True)
    for name, data in hub_files.items():
        assert (folder / name).read_bytes() == data
    assert not (folder / dl.WORK_DIR).exists()
    before = len(hub.requests)
    assert dl.ensure_weight_set(folder, keep_originals=True) == dl.Report() and len(hub.requests) == before


def test_hub_unreachable_is_one_sentence_with_the_manual_steps(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    folder = tmp_path / dl.OFFICIAL_SET
    with pytest.raises(dl.DownloadError) as err:
        dl.ensure_weight_set(folder)
    message = str(err.value)
    assert "cannot get the official weights from http://127.0.0.1:9" in message and MAIN_TH in message
    assert "\n" not in message


def test_target_folder_prefers_an_existing_set_then_the_first_root(tmp_path):
    first, second = tmp_path / "yaml", tmp_path / "default"
    assert dl.target_folder([first, second]) == first / dl.OFFICIAL_SET
    (second / dl.OFFICIAL_SET).mkdir(parents=True)
    assert dl.target_folder([first, second]) == second / dl.OFFICIAL_SET



# --------------------------------------------------------------------------------------------- node and command line
@pytest.fixture
def comfy_roots(tmp_path, monkeypatch):
    """Two diffstyle360 model folders as ComfyUI gives them: the extra_model_paths.yaml one first, then the default."""
    from nodes import host

    roots = [tmp_path / "yaml_models", tmp_path / "ComfyUI" / "models" / "diffstyle360"]
    monkeypatch.setattr(host, "model_roots", lambda: [str(r) for r in roots])
    host.unload_all_models()
    host.request_interrupt(False)
    host.RecordingProgressBar.instances.clear()
    yield roots
    host.unload_all_models()
    host.request_interrupt(False)


def test_node_set_folder_finds_a_set_in_any_models_folder_and_places_the_official_one_first(comfy_roots):
    from nodes.download import set_folder

    assert set_folder(dl.OFFICIAL_SET) == comfy_roots[0] / dl.OFFICIAL_SET  # not on disk yet: the first root
    assert set_folder("mine") is None  # a set of the user's own that is nowhere
    (comfy_roots[1] / "mine").mkdir(parents=True)
    assert set_folder("mine") == comfy_roots[1] / "mine"
    (comfy_roots[1] / dl.OFFICIAL_SET).mkdir()
    assert set_folder(dl.OFFICIAL_SET) == comfy_roots[1] / dl.OFFICIAL_SET


def test_loader_node_offers_the_official_set_and_downloads_it_on_first_run(hub, hub_files, comfy_roots):
    import nodes
    from nodes import host, loader

    node = nodes.nodes_by_id()["DiffStyle360LoadAppearanceModules"]
    spec = node.GET_NODE_INFO_V1()["input"]
    assert spec["required"]["weight_set"][1]["options"] == [dl.OFFICIAL_SET]  # offered although nothing is on disk
    assert spec["optional"]["keep_downloaded_th"][0] == "BOOLEAN"

    (handle,) = call(node, dl.OFFICIAL_SET, loader.TRAINING_FREE, "fp32", "off", True)
    folder = comfy_roots[0] / dl.OFFICIAL_SET  # the extra_model_paths.yaml folder comes first
    assert handle.path == folder and (folder / MAIN_TH).is_file()  # keep_downloaded_th=True kept it
    bars = host.RecordingProgressBar.instances
    download_bar = bars[0]  # ComfyUI's progress bar in bytes, ending at the total
    total = sum(len(d) for d in hub_files.values())
    assert download_bar.total == total and download_bar.calls[-1][:2] == (total, total)
    assert len(download_bar.calls) >= 3 and all(t == total for _, t, _ in download_bar.calls)
    assert bars[-1].calls[-1][0] == bars[-1].total  # the conversion bar finished
    assert handle.main_model().config.kind == MAIN and len(handle.cameras()) == 32

    before = len(hub.requests)
    call(node, dl.OFFICIAL_SET, loader.TRAINING_FREE, "fp32")
    assert len(hub.requests) == before  # later runs: nothing asked, nothing downloaded


def test_loader_node_converts_hand_placed_th_and_passes_cancel_through(hub, tiny_weights, comfy_roots):
    import nodes
    from nodes import host, loader

    node = nodes.nodes_by_id()["DiffStyle360LoadAppearanceModules"]
    mine = comfy_roots[1] / "mine"
    mine.mkdir(parents=True)
    tiny = Path(tiny_weights)
    shutil.copy(tiny / "original" / "model_state-tiny.th", mine / "model_state-tiny.th")
    shutil.copy(tiny / "original" / "model_state-tiny.config.json", mine / "model_state-tiny.config.json")
    shutil.copytree(tiny / "cam_condition", mine / "cam_condition")
    assert "mine" in node.GET_NODE_INFO_V1()["input"]["required"]["weight_set"][1]["options"]  # listed unconverted
    (handle,) = call(node, "mine", loader.TRAINING_FREE, "fp32")
    assert handle.has(MAIN) and not handle.has(BACK_VIEW) and (mine / "model_state-tiny.th").is_file()
    assert hub.requests == []  # a set of the user's own is never downloaded into

    host.request_interrupt(True)  # Cancel pressed: the host's exception, not a DiffStyle360 error
    with pytest.raises(host.InterruptProcessingException):
        call(node, dl.OFFICIAL_SET, loader.TRAINING_FREE, "fp32")


def test_loader_node_errors_are_one_sentence(hub, comfy_roots, monkeypatch):
    from nodes import loader
    from nodes.common import DiffStyle360Error

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DiffStyle360Error) as err:
        run("DiffStyle360LoadAppearanceModules", dl.OFFICIAL_SET, loader.TRAINING_FREE)
    message = str(err.value)
    assert message.startswith("Load Appearance Modules: HF_HUB_OFFLINE is set") and "\n" not in message


def test_cli_download_command(hub, tmp_path, capsys, monkeypatch):
    from huggingface_hub.utils import enable_progress_bars

    from diffstyle360_core.cli.main import main

    folder = tmp_path / "weights"
    try:
        assert main(["download", "--weights-dir", str(folder), "--keep-th"]) == 0
        out, err = capsys.readouterr()
        assert f"weights ready in {folder}" in out
        assert "downloading" in err and "converting" in err and " MB" in err
        assert (folder / MAIN_TH).is_file() and loading.read_config(folder, BACK_VIEW).kind == BACK_VIEW
        assert main(["download", "--weights-dir", str(folder)]) == 0
        assert "nothing to do" in capsys.readouterr().out

        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert main(["download", "--weights-dir", str(tmp_path / "other")]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: HF_HUB_OFFLINE is set")
    finally:
        enable_progress_bars()
