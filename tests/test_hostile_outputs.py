"""Hostile and mistaken output folders (issue 14, items 2 and 3): a run deletes only what it can prove it
wrote, never touches an input, and every way a process is stopped leaves the old or the new complete result.

The models are replaced by fakes (these test the files and signals, not the sampling); subprocesses
synchronise on a line they print when they reach the point under test, never on a sleep."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from diffstyle360_core import loading, pipeline
from diffstyle360_core.cli import outputs
from diffstyle360_core.cli.main import main
from diffstyle360_core.cli.outputs import OutputError, RunOutput, current_files

ROOT = Path(__file__).resolve().parents[1]
CONTENT = ROOT / "workflows" / "images" / "astronaut.png"
STYLE = ROOT / "workflows" / "images" / "style_posterized.png"


def _stylize(weights, out, *extra):
    return ["stylize", "--weights", str(weights), "--content", str(CONTENT), "--style", str(STYLE),
            "--steps", "1", "--out", str(out), *extra]


def _back_view(weights, out, *extra):
    return ["back-view", "--weights", str(weights), "--content", str(CONTENT), "--steps", "1", "--out", str(out),
            *extra]


def _fake_result(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=gen) * 2 - 1  # noqa: E731
    return pipeline.TurntableResult(rand(n, 3, 64, 64), [0.0] * n, rand(1, 3, 64, 64), [[rand(1, 3, 64, 64)]])


@pytest.fixture
def fake_models(monkeypatch):
    """No model loads; sampling returns random views at once (a different seed each call: new files differ)."""
    calls = []
    monkeypatch.setattr(loading, "load_main", lambda *a, **k: None)
    monkeypatch.setattr(loading, "load_back_view", lambda *a, **k: None)
    monkeypatch.setattr(pipeline.DiffStyle360Pipeline, "stylize",
                        lambda self, *a, cameras=None, **k: calls.append(1) or _fake_result(len(cameras), len(calls)))
    monkeypatch.setattr(pipeline.DiffStyle360Pipeline, "back_view",
                        lambda self, *a, **k: calls.append(1) or _fake_result(1, len(calls)).content_back)
    return calls


def _files(folder):
    """{relative path: bytes} of the user-visible files (our hidden manifest excluded)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def _hidden(folder):
    """Hidden entries other than manifests: lock, journal, temporary folders; none may stay after a run."""
    return [p.name for p in Path(folder).iterdir()
            if p.name.startswith(".") and not p.name.startswith(".ds360-manifest-")]


def _one_error_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------- #
# inputs inside the output folder
# --------------------------------------------------------------------------- #
def test_a_content_file_named_view_000_in_out_is_refused_and_left_intact(tiny_weights, tmp_path, capsys,
                                                                          fake_models):
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "view_000.png"
    mine.write_bytes(CONTENT.read_bytes())
    args = _stylize(tiny_weights, out, "--views", "2")
    args[args.index("--content") + 1] = str(mine)
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert line == (f"error: --content {mine} is a file this run would replace; copy it elsewhere first "
                    "or choose another output folder")
    assert mine.read_bytes() == CONTENT.read_bytes() and not fake_models  # refused before any sampling
    assert sorted(p.name for p in out.iterdir()) == ["view_000.png"]  # no lock, temp folder or manifest


def test_an_earlier_runs_back_view_as_input_is_refused_also_through_links(tiny_weights, tmp_path, capsys,
                                                                          fake_models):
    out = tmp_path / "out"
    assert main(_stylize(tiny_weights, out, "--views", "2")) == 0
    capsys.readouterr()
    back = out / "back_views" / "content_back_000.png"
    before = _files(out)
    (tmp_path / "soft.png").symlink_to(back)
    os.link(back, tmp_path / "hard.png")
    for given in (back, tmp_path / "soft.png", tmp_path / "hard.png"):
        assert main(_stylize(tiny_weights, out, "--views", "2", "--content-back", str(given))) == 2
        line = _one_error_line(capsys)
        which = "" if given == back else f" (the same file as {back})"
        assert line.startswith(f"error: --content-back {given}{which} is a file this run would replace"), line
    assert _files(out) == before and not _hidden(out) and len(fake_models) == 1
    assert main(_stylize(tiny_weights, tmp_path / "other", "--views", "2", "--content-back", str(back))) == 0


@pytest.mark.parametrize("where", ["guide frames are the output folder", "output inside the weights"])
def test_an_input_folder_never_receives_the_runs_files(tiny_weights, tmp_path, capsys, fake_models, where):
    if where == "guide frames are the output folder":
        out = tmp_path / "frames"
        out.mkdir()
        frames = tiny_weights / "cam_condition" / "sphere32"
        for p in sorted(frames.glob("*.png"))[:2]:
            (out / p.name).write_bytes(p.read_bytes())
        args, label, folder = _stylize(tiny_weights, out, "--views", "2", "--guide-frames", str(out)), \
            "--guide-frames", out
    else:
        out = tiny_weights / "main"
        args, label, folder = _stylize(tiny_weights, out, "--views", "2"), "--weights", tiny_weights / "main"
    before = _files(folder)
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {label} {folder} would receive this run's file {out}/"), line
    assert line.endswith("; choose an output folder outside it")
    assert _files(folder) == before and not _hidden(folder) and not fake_models
    if label == "--guide-frames":  # input folders are read file by file: a subfolder of one is a fine output
        assert main(args[:-2] + ["--guide-frames", str(out), "--out", str(out / "sub")]) == 0
        assert _files(folder) == {**before, **{f"sub/{k}": v for k, v in _files(out / "sub").items()}}


# --------------------------------------------------------------------------- #
# user files, empty --out, two commands in one folder
# --------------------------------------------------------------------------- #
def test_user_files_matching_view_names_are_never_deleted_or_overwritten(tiny_weights, tmp_path, capsys,
                                                                         fake_models):
    out = tmp_path / "out"
    (out / "back_views").mkdir(parents=True)
    user = {"view_005.png": b"my own view 5", "back_00.png": b"mine", "back_views/mine.png": b"also mine",
            "turntable.gif.bak": b"an old gif"}
    for name, data in user.items():
        (out / name).write_bytes(data)
    assert main(_stylize(tiny_weights, out, "--views", "2")) == 0
    assert {k: v for k, v in _files(out).items() if k in user} == user
    first = _files(out)
    capsys.readouterr()
    assert main(_stylize(tiny_weights, out, "--views", "6")) == 2  # would write view_005.png: refused at once
    assert _one_error_line(capsys) == (f"error: {out / 'view_005.png'} already exists and was not written by an "
                                       f"earlier stylize run in {out}; move that file away or choose another "
                                       "output folder")
    assert _files(out) == first and len(fake_models) == 1
    assert main(_stylize(tiny_weights, out, "--views", "1")) == 0  # fewer views: view_001 of our run goes
    now = _files(out)
    assert {k: v for k, v in now.items() if k in user} == user
    assert sorted(set(now) - set(user)) == ["back_views/content_back_000.png", "back_views/style1_back_000.png",
                                            "turntable.gif", "turntable.webp", "view_000.png"]
    assert not _hidden(out)


def test_an_empty_out_is_refused_and_the_current_folder_untouched(tiny_weights, tmp_path, capsys, monkeypatch,
                                                                  fake_models):
    monkeypatch.chdir(tmp_path)
    for args in (_stylize(tiny_weights, ""), _back_view(tiny_weights, ""), _stylize(tiny_weights, "  ")):
        assert main(args) == 2
        assert _one_error_line(capsys) == "error: --out is empty; give an output folder, e.g. --out out/"
    assert main(["convert", "--checkpoint", str(tiny_weights / "original" / "back_head-tiny.th"), "--out", ""]) == 2
    assert _one_error_line(capsys) == "error: --out is empty; give an output folder, e.g. --out WEIGHTS/main"
    assert main(["make-tiny", ""]) == 2
    assert _one_error_line(capsys) == ("error: the output folder name is empty; give an output folder, "
                                       "e.g. make-tiny tiny/")
    assert list(tmp_path.iterdir()) == [] and not fake_models


def test_back_view_and_stylize_results_in_one_folder_coexist(tiny_weights, tmp_path, fake_models):
    out = tmp_path / "out"
    assert main(_stylize(tiny_weights, out, "--views", "3")) == 0
    assert main(_back_view(tiny_weights, out)) == 0
    turntable = {k: v for k, v in _files(out).items() if k != "back_000.png"}
    assert len(turntable) == 7  # 3 views, gif, webp, 2 backs
    assert main(_back_view(tiny_weights, out)) == 0  # a new back view replaces only back_000.png
    back = _files(out)["back_000.png"]
    assert {k: v for k, v in _files(out).items() if k != "back_000.png"} == turntable
    assert main(_stylize(tiny_weights, out, "--views", "2")) == 0  # a new turntable leaves the back view
    assert _files(out)["back_000.png"] == back and len(_files(out)) == 7
    assert current_files(out, "back-view") == ["back_000.png"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [
        ".ds360-manifest-back-view.json", ".ds360-manifest-stylize.json"]


# --------------------------------------------------------------------------- #
# the lock path
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("what", ["a folder", "a symbolic link", "a file with other hard links"])
def test_a_lock_path_that_is_not_our_lock_file_is_refused_and_never_written(tiny_weights, tmp_path, capsys, what,
                                                                             fake_models):
    out, precious = tmp_path / "out", tmp_path / "precious.txt"
    out.mkdir()
    precious.write_text("years of notes")
    lock = out / outputs.LOCK_NAME
    if what == "a folder":
        lock.mkdir()
        (lock / "inside.txt").write_text("kept")
    elif what == "a symbolic link":
        lock.symlink_to(precious)
    else:
        os.link(precious, lock)
    assert main(_stylize(tiny_weights, out, "--views", "2")) == 2
    assert _one_error_line(capsys) == (f"error: {lock} is {what}, not a DiffStyle360 lock file; move it away or "
                                       "choose another output folder")
    assert precious.read_text() == "years of notes" and not fake_models
    assert what != "a folder" or (lock / "inside.txt").read_text() == "kept"
    assert sorted(p.name for p in out.iterdir()) == [outputs.LOCK_NAME]
    with pytest.raises(OutputError, match=f"is {what}, not a DiffStyle360 lock file"):
        current_files(out)


def test_an_output_folder_that_is_a_lock_file_is_refused(tiny_weights, tmp_path, capsys):
    out = tmp_path / "out"
    with RunOutput(out):  # another run holds out/; its lock file is given as --out
        lock = out / outputs.LOCK_NAME
        assert main(_stylize(tiny_weights, lock)) == 2
        assert _one_error_line(capsys) == f"error: output folder {lock} is a file; give a folder"
        assert lock.read_text().strip() == str(os.getpid())


# --------------------------------------------------------------------------- #
# SIGKILL at every rename of the commit
# --------------------------------------------------------------------------- #
OLD = {"view_000.png": b"old 0", "view_001.png": b"old 1", "view_002.png": b"old 2",
       "back_views/content_back_000.png": b"old back", "turntable.gif": b"old gif"}
NEW = {"view_000.png": b"new 0", "view_001.png": b"new 1", "back_views/content_back_000.png": b"new back",
       "back_views/style1_back_000.png": b"new style back", "turntable.gif": b"new gif", "turntable.webp": b"new webp"}
USER = {"notes.txt": b"mine", "view_099.png": b"my view", "back_views/mine.png": b"my back"}

KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from diffstyle360_core.cli import outputs

    kill_at, out, new = int(sys.argv[1]), sys.argv[2], {new!r}
    renames, real_rename, real_remove = [0], outputs._rename, outputs._remove

    def rename(src, dst):  # SIGKILL right after the kill_at-th rename (0: before the first)
        if kill_at == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        real_rename(src, dst)
        renames[0] += 1
        if renames[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def remove(path):  # kill_at -1: after the journal is gone, while the old set is being deleted
        if kill_at == -1 and Path(path).name.startswith(".ds360-old-"):
            os.kill(os.getpid(), signal.SIGKILL)
        real_remove(path)

    outputs._rename, outputs._remove = rename, remove
    with outputs.RunOutput(out, kind="stylize") as run:
        for name, data in new.items():
            run.write(name, lambda p, d=data: Path(p).write_bytes(d))
        run.commit()
    print(renames[0])
""")


def _write_set(out, files, kind="stylize"):
    with RunOutput(out, kind=kind) as run:
        for name, data in files.items():
            run.write(name, lambda p, d=data: Path(p).write_bytes(d))
        run.commit()


def _killed_commit(tmp_path, kill_at):
    out = tmp_path / f"out_{kill_at}"
    _write_set(out, OLD)
    for name, data in USER.items():
        (out / name).write_bytes(data)
    script = KILLER.format(root=str(ROOT), new=NEW)
    run = subprocess.run([sys.executable, "-c", script, str(kill_at), str(out)], capture_output=True, text=True,
                         timeout=120)
    return out, run


def test_a_sigkill_at_every_rename_of_the_commit_leaves_the_old_or_the_new_complete_set(tmp_path):
    out, run = _killed_commit(tmp_path, 10**6)  # no kill: count the renames of one commit
    assert run.returncode == 0, run.stderr
    total = int(run.stdout)
    assert total == 1 + len(OLD) + len(NEW) + 1  # journal, old set aside, new set in, manifest
    for kill_at in [*range(total + 1), -1]:
        out, run = _killed_commit(tmp_path, kill_at)
        assert run.returncode == -signal.SIGKILL, (kill_at, run.stderr)
        names = current_files(out, "stylize")  # reading the folder settles it first
        expected = OLD if kill_at == 0 else NEW  # the journal's rename is the commit point
        assert names == sorted(expected), kill_at
        assert _files(out) == {**expected, **USER}, kill_at  # exactly one complete set, user files intact
        assert not _hidden(out), (kill_at, _hidden(out))
        _write_set(out, {"view_000.png": b"next"})  # the next run completes and replaces exactly its set
        assert _files(out) == {"view_000.png": b"next", **USER}, kill_at
        assert not _hidden(out)


def test_the_next_run_settles_a_killed_commit_before_its_own_checks(tmp_path):
    out, run = _killed_commit(tmp_path, 4)  # journal + 3 of the old files moved aside, nothing new in yet
    assert run.returncode == -signal.SIGKILL
    mix = ["view_001.png", "view_002.png", "view_099.png"]  # a plain ls: old view_000 is aside, 001-002 not yet
    assert sorted(p.name for p in out.glob("view_*.png")) == mix
    with RunOutput(out, kind="stylize", planned=list(NEW)) as again:  # its own names are ours once settled
        assert _files(out) == {**NEW, **USER}
        for name in NEW:
            again.write(name, lambda p: Path(p).write_bytes(b"third"))
        again.commit()
    assert _files(out) == {**{n: b"third" for n in NEW}, **USER} and not _hidden(out)


# --------------------------------------------------------------------------- #
# SIGINT, SIGTERM, SIGHUP to a real process
# --------------------------------------------------------------------------- #
CLI = textwrap.dedent("""
    import signal, sys, time
    sys.path.insert(0, {root!r})
    signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever the test runner's shell left
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    import torch
    from diffstyle360_core import loading, pipeline
    from diffstyle360_core.cli import outputs
    from diffstyle360_core.cli.main import main

    loading.load_main = loading.load_back_view = lambda *a, **k: None
    wait_in_sampling, wait_after_rename = {wait_in_sampling!r}, {wait_after_rename!r}

    def stylize(self, content, style=None, *, cameras=None, **kw):
        if wait_in_sampling:
            print("sampling", flush=True)
            time.sleep(600)  # the signal ends this
        n, gen = len(cameras), torch.Generator().manual_seed(7)
        rand = lambda *s: torch.rand(*s, generator=gen) * 2 - 1
        return pipeline.TurntableResult(rand(n, 3, 64, 64), [0.0] * n, rand(1, 3, 64, 64), [[rand(1, 3, 64, 64)]])

    pipeline.DiffStyle360Pipeline.stylize = stylize
    renames, real_rename = [0], outputs._rename

    def rename(src, dst):
        real_rename(src, dst)
        renames[0] += 1
        if renames[0] == wait_after_rename:
            print("committing", flush=True)
            sys.stdin.readline()  # the test sends its signal, then a line

    outputs._rename = rename
    sys.exit(main({argv!r}))
""")


def _cli_process(argv, *, wait_in_sampling=False, wait_after_rename=None):
    code = CLI.format(root=str(ROOT), argv=[str(a) for a in argv], wait_in_sampling=wait_in_sampling,
                      wait_after_rename=wait_after_rename)
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc):
    try:
        return proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("signum, code, how", [(signal.SIGINT, 130, "interrupted"),
                                               (signal.SIGTERM, 143, "stopped by SIGTERM"),
                                               (signal.SIGHUP, 129, "stopped by SIGHUP")])
def test_a_signal_while_sampling_exits_128_plus_n_with_one_line_and_keeps_the_earlier_run(tiny_weights, tmp_path,
                                                                                         fake_models, signum, code,
                                                                                         how):
    out = tmp_path / "out"
    assert main(_stylize(tiny_weights, out, "--views", "3")) == 0
    before = _files(out)
    proc = _cli_process(_stylize(tiny_weights, out, "--views", "2"), wait_in_sampling=True)
    assert proc.stdout.readline().strip() == "sampling"  # the run holds the folder and is sampling now
    assert outputs.LOCK_NAME in _hidden(out)
    proc.send_signal(signum)
    _, err = _finish(proc)
    assert proc.returncode == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"{how}; nothing written ({out} left as it was)"], err
    assert _files(out) == before and not _hidden(out)  # no lock, partial folder or journal left behind


def test_a_sigterm_inside_the_commit_is_held_until_the_new_set_is_complete(tiny_weights, tmp_path, fake_models):
    """Today's failure: SIGTERM after 2 of the new views moved left them beside the old set (SIGHUP: same path)."""
    signum, code, how = signal.SIGTERM, 143, "stopped by SIGTERM"
    out = tmp_path / "out"
    assert main(_stylize(tiny_weights, out, "--views", "8")) == 0
    proc = _cli_process(_stylize(tiny_weights, out, "--views", "6"), wait_after_rename=3)
    assert proc.stdout.readline().strip() == "committing"  # the journal and 2 files have moved
    proc.send_signal(signum)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    _, err = _finish(proc)
    assert proc.returncode == code, err
    assert [line for line in err.splitlines() if line.strip()] == [f"{how}; kept the complete results in {out}"]
    assert sorted(p.name for p in out.glob("view_*.png")) == [f"view_{i:03d}.png" for i in range(6)]
    assert current_files(out, "stylize") == sorted(_files(out)) and not _hidden(out)


def test_a_signal_the_caller_ignores_stays_ignored(tiny_weights, tmp_path, capsys):
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
    try:
        assert main(_stylize(tiny_weights, "")) == 2
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
    term = signal.getsignal(signal.SIGTERM)
    assert main(_stylize(tiny_weights, "")) == 2
    assert signal.getsignal(signal.SIGTERM) == term  # main() puts back what it found
