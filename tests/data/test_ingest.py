from __future__ import annotations

import builtins
import errno
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from ingest_fixtures import (
    abort_on_marker,
    crash_on_marker,
    listing,
    make_aptos,
    make_cxr14,
    make_imagefolder,
    make_oct,
    write_dicom,
    write_image,
)

from midol_cli.artifacts import MANIFEST_COLUMNS, stable_id
from midol_cli.data import ingest as ingest_mod
from midol_cli.data import readers
from midol_cli.data.ingest import default_out, ingest_folder
from midol_cli.data.manifest import read_manifest
from midol_cli.errors import UsageError


def run(root: Path, out: Path, modality: str = "fundus", **kw):
    kw.setdefault("workers", 1)
    summary = ingest_folder(root, modality, out=out, **kw)
    df, meta = read_manifest(out)
    return summary, df.set_index("path", drop=False), meta


def test_chestxray14_end_to_end(tmp_path):
    raw = tmp_path / "cxr"
    rows = make_cxr14(raw, patients=8)
    summary, df, meta = run(raw, tmp_path / "m.parquet", modality="xray")
    assert summary["ok"] == len(rows) == len(df) and summary["rejected"] == 0
    assert list(df.columns) == list(MANIFEST_COLUMNS)
    r = df.loc[f"images/{rows[2]['name']}"]  # every third image is MONOCHROME1
    assert r["intensity"].endswith("+invert_monochrome1") and r["format"] == "DICOM" and r["bit_depth"] == 12
    assert "invert" not in df.loc[f"images/{rows[0]['name']}", "intensity"]
    assert r["sample_id"] == stable_id("chestxray14", r["path"])
    assert list(r["labels"]) == sorted(rows[2]["labels"].split("|"))
    # Official test stays test; val is carved out of train_val by patient.
    for row in rows:
        got = df.loc[f"images/{row['name']}"]
        if row["split"] == "test":
            assert (got["split"], got["split_source"]) == ("test", "official")
        else:
            assert got["split"] in ("train", "val")
            assert got["split_source"] == ("official" if got["split"] == "train" else "derived")
    assert (df.groupby("group")["split"].nunique() == 1).all()
    assert (df["split"] == "val").any()
    assert meta["root"] == str(raw.resolve()) and meta["layout"] == "chestxray14"
    assert meta["modality"] == "xray" and meta["dataset"] == "chestxray14" and meta["seed"] == 0
    assert meta["counts"]["ok"] == len(rows)


def make_bad_folder(raw: Path) -> dict[str, str]:
    """An imagefolder with one file of every reject class; returns path -> expected reason."""
    make_imagefolder(raw, classes=("a", "b"), per_class=3)
    bad = raw / "a"
    (bad / "zero.png").write_bytes(b"")
    trunc = write_image(bad / "trunc.jpg", (64, 64))
    trunc.write_bytes(trunc.read_bytes()[:2000])
    corrupt = write_image(bad / "corrupt.png", (64, 64))
    data = bytearray(corrupt.read_bytes())
    for i in range(200, 400):
        data[i] ^= 0x55
    corrupt.write_bytes(bytes(data))
    (bad / "text.png").write_text("this is a note, not an image")
    (bad / "broken.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff")
    write_image(bad / "huge.png", (80, 80))
    (bad / "dangling.jpg").symlink_to(raw / "nowhere.jpg")
    os.mkfifo(bad / "pipe.png")
    write_image(bad / "locked.png")
    return {
        "a/zero.png": "zero-byte file",
        "a/trunc.jpg": "truncated image",
        "a/corrupt.png": "corrupt image data",
        "a/text.png": "not an image",
        "a/broken.dcm": "unreadable DICOM",
        "a/huge.png": "over pixel cap (80 x 80)",
        "a/dangling.jpg": "broken symlink",
        "a/pipe.png": "not a regular file",
        "a/locked.png": "permission denied",
    }


def deny(monkeypatch, name: str) -> None:
    """Make the reader's open() fail with EACCES for one file (tests run as root, who reads anything)."""
    real_open = builtins.open

    def fake_open(path, *a, **kw):
        if os.fspath(path).endswith(name):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(readers, "open", fake_open, raising=False)


def test_every_bad_input_becomes_one_rejected_row(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    expected = make_bad_folder(raw)
    deny(monkeypatch, "locked.png")
    # isolate=False: decode in this process, where the patched open() is (worker processes would not see it)
    summary, df, _ = run(raw, tmp_path / "m.parquet", max_pixels=5000, layout="imagefolder", isolate=False)
    assert len(df) == 6 + len(expected)
    rejected = df[df["status"] == "rejected"]
    assert dict(zip(rejected["path"], rejected["reason"], strict=True)) == expected
    assert (df.loc[df["status"] == "ok", "reason"] == "").all()
    assert summary["rejects_by_reason"]["over pixel cap"] == 1 and summary["rejected"] == len(expected)
    assert df.loc["a/trunc.jpg", "bytes"] == 2000 and len(df.loc["a/trunc.jpg", "sha256"]) == 64


def test_listed_but_missing_and_unlisted(tmp_path):
    raw = tmp_path / "aptos"
    ids = make_aptos(raw, per_class=2)
    (raw / "train_images" / f"{ids[0]}.png").unlink()
    write_image(raw / "train_images" / "ffffffffffff.png")
    summary, df, _ = run(raw, tmp_path / "m.parquet")
    assert df.loc[f"train_images/{ids[0]}.png", "reason"] == "listed in train.csv but missing"
    assert df.loc["train_images/ffffffffffff.png", "label"] == ""
    assert summary["unlisted"] == 1
    assert any("1 image files are not listed in train.csv" in w for w in summary["warnings"])


def test_duplicates_and_leakage_warning(tmp_path):
    raw = tmp_path / "raw"
    make_imagefolder(raw, splits=("train", "test"), per_class=2)
    shutil.copy(raw / "train" / "cat" / "img_0.png", raw / "test" / "cat" / "copy.png")
    shutil.copy(raw / "train" / "dog" / "img_1.png", raw / "train" / "cat" / "img_9.png")
    summary, df, _ = run(raw, tmp_path / "m.parquet", layout="imagefolder")
    # The first copy in path order is the original ("test/..." sorts before "train/...").
    assert df.loc["train/cat/img_0.png", "duplicate_of"] == df.loc["test/cat/copy.png", "sample_id"]
    assert df.loc["test/cat/copy.png", "duplicate_of"] == ""
    assert df.loc["train/dog/img_1.png", "duplicate_of"] == df.loc["train/cat/img_9.png", "sample_id"]
    split_of = dict(zip(df["sample_id"], df["split"], strict=True))
    dups = df[df["duplicate_of"] != ""]
    across = sum(split_of[d] != s for d, s in zip(dups["duplicate_of"], dups["split"], strict=True))
    assert summary["duplicates"] == 2 and summary["duplicates_across_splits"] == across >= 1
    assert any(w.startswith(f"leakage: {across} exact duplicate") for w in summary["warnings"])


def test_rerun_reuses_unchanged_rows_and_rereads_changed_ones(tmp_path):
    raw = tmp_path / "oct"
    made = make_oct(raw)
    out = tmp_path / "m.parquet"
    s1, df1, _ = run(raw, out, modality="oct")
    assert (s1["decoded"], s1["reused"]) == (len(made), 0)
    s2, df2, _ = run(raw, out, modality="oct")
    assert (s2["decoded"], s2["reused"]) == (0, len(made))
    assert df2.drop(columns="labels").equals(df1.drop(columns="labels"))
    changed = raw / made[0][0]
    write_image(changed, (48, 20), mode="L")
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    write_image(raw / "OCT2017" / "train" / "CNV" / "CNV-999-1.jpeg", (32, 16), mode="L")
    s3, df3, _ = run(raw, out, modality="oct")
    assert (s3["decoded"], s3["reused"]) == (2, len(made) - 1)
    assert df3.loc[made[0][0], "width"] == 48
    assert df3.loc[made[0][0], "sha256"] != df1.loc[made[0][0], "sha256"]
    # Another pixel cap can change accept/reject: nothing is reused.
    s4, _, _ = run(raw, out, modality="oct", max_pixels=10**6)
    assert s4["reused"] == 0


def test_rehash_rereads_a_file_replaced_with_the_same_size_and_mtime(tmp_path):
    """issue 25.5: a file replaced by one of the same size and mtime (``cp -p``, ``touch -r``) was kept as
    unchanged by every re-ingest; ``rehash`` (``midol ingest --rehash``) reads every file again."""
    raw = tmp_path / "oct"
    made = make_oct(raw)
    out = tmp_path / "m.parquet"
    _, df1, _ = run(raw, out, modality="oct")
    victim = raw / made[0][0]
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF  # same size, other bytes, then the old times back
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    s2, df2, _ = run(raw, out, modality="oct")
    assert s2["reused"] == len(made) and df2.loc[made[0][0], "sha256"] == df1.loc[made[0][0], "sha256"]
    from midol_cli.data.shards import ShardParams, write_shards

    idx = write_shards([out], tmp_path / "shards", ShardParams(max_side=32, min_shards=1), workers=1)
    reasons = {x["path"]: x["reason"] for x in idx["skipped"]["items"]}
    assert "re-run `midol ingest --rehash`" in reasons[made[0][0]]  # a plain re-run cannot fix it
    s3, df3, _ = run(raw, out, modality="oct", rehash=True)
    assert (s3["decoded"], s3["reused"]) == (len(made), 0)
    assert df3.loc[made[0][0], "sha256"] != df1.loc[made[0][0], "sha256"]


def test_permission_reject_is_not_reused(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    make_imagefolder(raw, per_class=2)
    out = tmp_path / "m.parquet"
    deny(monkeypatch, "img_0.png")
    s1, df1, _ = run(raw, out, isolate=False)  # in this process, where the patched open() is
    assert (df1["reason"] == "permission denied").sum() == 2
    monkeypatch.undo()
    s2, df2, _ = run(raw, out)
    assert s2["reused"] == 2 and s2["decoded"] == 2 and (df2["status"] == "ok").all()


def test_nothing_written_inside_raw_and_out_inside_refused(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    make_cxr14(raw, patients=3)
    before = listing(raw)
    with pytest.raises(UsageError, match="inside the raw folder"):
        ingest_folder(raw, "xray", out=raw / "images" / "m.parquet")
    monkeypatch.chdir(tmp_path)
    summary = ingest_folder(raw, "xray", workers=2)
    assert summary["manifest"] == str(tmp_path / "manifests" / "raw.parquet")
    assert Path(summary["manifest"]).is_file()
    assert listing(raw) == before
    monkeypatch.chdir(raw)  # the default ./manifests would land inside the raw folder
    with pytest.raises(UsageError, match="inside the raw folder"):
        ingest_folder(raw, "xray")
    assert default_out(raw, cwd=tmp_path) == tmp_path / "manifests" / "raw.parquet"


def test_worker_crash_rejects_only_the_culprit(tmp_path):
    raw = tmp_path / "raw"
    files = make_imagefolder(raw, per_class=6)
    paths = [str(raw / f) for f in files] + [str(write_image(raw / "cat" / "crash.png"))]
    out = ingest_mod._decode_all(
        paths, readers.DEFAULT_MAX_PIXELS, 2, None, lambda _m: None, chunk_fn=crash_on_marker
    )
    assert set(out) == set(paths)
    assert out[paths[-1]]["reason"] == "decoder crashed"
    assert all(out[p]["status"] == "ok" for p in paths[:-1])


@pytest.mark.parametrize("workers", [1, 2])
def test_a_decoder_that_aborts_the_process_costs_only_its_file_with_one_worker_too(tmp_path, workers):
    """With --workers 1 a native decoder's abort() (a corrupt JPEG 2000 DICOM) killed ingest itself: exit
    134, no manifest (issue 25.6). One worker is a child process too, so the file is a reject and the
    rest is read."""
    raw = tmp_path / "raw"
    files = make_imagefolder(raw, per_class=6)
    paths = [str(raw / f) for f in files]
    paths.insert(5, str(write_image(raw / "cat" / "crash.png")))
    lines: list[str] = []
    out = ingest_mod._decode_all(paths, readers.DEFAULT_MAX_PIXELS, workers, None, lines.append,
                                 chunk_fn=abort_on_marker)
    assert set(out) == set(paths)
    assert out[paths[5]]["reason"] == "decoder crashed" and out[paths[5]]["status"] == "rejected"
    assert all(out[p]["status"] == "ok" for p in paths if p != paths[5])
    assert any("a decoder crashed on" in line and "crash.png" in line for line in lines)


def test_user_errors(tmp_path):
    raw = tmp_path / "raw"
    make_imagefolder(raw, per_class=1)
    out = tmp_path / "m.parquet"
    with pytest.raises(UsageError, match="does not exist"):
        ingest_folder(tmp_path / "nope", "fundus", out=out)
    with pytest.raises(UsageError, match="did you mean 'fundus'"):
        ingest_folder(raw, "fondus", out=out)
    with pytest.raises(UsageError, match="--new-modality"):
        ingest_folder(raw, "ultrasound", out=out)
    assert ingest_folder(raw, "ultrasound", out=out, new_modality=True, workers=1)["modality"] == "ultrasound"
    with pytest.raises(UsageError, match="unknown layout 'imagefolders'"):
        ingest_folder(raw, "fundus", out=out, layout="imagefolders")
    flat = tmp_path / "flat"
    write_image(flat / "a.png")
    lines: list[str] = []
    s = ingest_folder(flat, "fundus", out=out, workers=1, log=lines.append)  # auto: unlabelled (issue 25.16)
    assert s["per_label_split"] == {"(unlabelled)": {"train": 1, "val": 0, "test": 0}}
    assert s["layout"] == "imagefolder"
    note = f"no dataset layout and no class sub-folders in '{flat}': its images are ingested unlabelled"
    assert s["warnings"][0].startswith(note) and any(line.startswith(f"ingest: {note}") for line in lines)
    s = ingest_folder(flat, "fundus", out=out, layout="imagefolder", workers=1)
    assert s["per_label_split"] == {"(unlabelled)": {"train": 1, "val": 0, "test": 0}}
    assert not any("no dataset layout" in w for w in s["warnings"])
    for empty in (tmp_path / "empty", tmp_path / "only_text"):  # nothing midol reads: said plainly
        (empty / "sub").mkdir(parents=True)
        (empty / "sub" / "notes.txt").write_text("x")
        for lay in ("auto", "imagefolder"):
            with pytest.raises(UsageError, match=rf"^no images in '{empty}' \(midol reads "):
                ingest_folder(empty, "fundus", out=out, layout=lay)
    notes = tmp_path / "notes.parquet"
    notes.write_text("my notes")
    with pytest.raises(UsageError, match="is not a midol manifest"):
        ingest_folder(raw, "fundus", out=notes)
    assert notes.read_text() == "my notes"


def test_progress_bar_path_gives_the_same_rows(tmp_path):
    raw = tmp_path / "raw"
    make_imagefolder(raw, per_class=3)
    _, plain, _ = run(raw, tmp_path / "a.parquet")
    calls = []
    _, barred, _ = run(raw, tmp_path / "b.parquet", progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1]
    assert barred.drop(columns="labels").equals(plain.drop(columns="labels"))


def test_dicom_extensionless_in_imagefolder(tmp_path):
    raw = tmp_path / "raw"
    write_dicom(raw / "ct" / "IM0001", (np.arange(16).reshape(4, 4) * 100).astype(np.uint16))
    write_image(raw / "ct" / "b.png")
    summary, df, _ = run(raw, tmp_path / "m.parquet", modality="xray")
    assert df.loc["ct/IM0001", "format"] == "DICOM" and df.loc["ct/IM0001", "status"] == "ok"
    assert summary["ok"] == 2


def test_a_listed_file_in_an_unsupported_format_says_so(tmp_path):
    raw = tmp_path / "aptos"
    ids = make_aptos(raw, per_class=2)
    png = raw / "train_images" / f"{ids[0]}.png"
    png.rename(png.with_suffix(".gif"))  # present, but a format midol does not read
    (raw / "train_images" / f"{ids[1]}.png").unlink()  # truly missing
    _, df, _ = run(raw, tmp_path / "m.parquet")
    assert df.loc[f"train_images/{ids[0]}.png", "reason"].startswith(
        f"unsupported format (.gif: {ids[0]}.gif)"
    )
    assert df.loc[f"train_images/{ids[1]}.png", "reason"] == "listed in train.csv but missing"


def test_symlinked_folders_are_followed_once_and_loops_reported(tmp_path):
    raw = tmp_path / "raw"
    make_imagefolder(raw, splits=("train",), per_class=2)
    elsewhere = tmp_path / "elsewhere" / "bird"
    make_imagefolder(tmp_path / "elsewhere_src", splits=("train",), per_class=2)
    shutil.copytree(tmp_path / "elsewhere_src" / "train" / "cat", elsewhere)
    (raw / "train" / "bird").symlink_to(elsewhere, target_is_directory=True)  # data linked in
    (raw / "train" / "cat" / "loop").symlink_to(raw / "train", target_is_directory=True)  # a loop
    summary, df, _ = run(raw, tmp_path / "m.parquet", layout="imagefolder")
    assert (df["label"] == "bird").sum() == 2  # the linked folder is ingested
    assert any("symlink to a folder already listed" in w for w in summary["walk_errors"])
    assert any("folders were not listed" in w for w in summary["warnings"])


def test_identical_files_with_conflicting_labels_are_flagged(tmp_path):
    raw = tmp_path / "raw"
    make_imagefolder(raw, splits=("train",), per_class=2)
    shutil.copy(raw / "train" / "cat" / "img_0.png", raw / "train" / "dog" / "same_as_cat.png")
    summary, df, _ = run(raw, tmp_path / "m.parquet", layout="imagefolder")
    assert summary["duplicate_label_conflicts"] == 1
    assert any(w.startswith("label conflict: 1 exact duplicate") for w in summary["warnings"])


DECODE_IN_CHILD = """
import sys
from ingest_fixtures import sleepy_chunk
from midol_cli.data.ingest_workers import _decode_all
_decode_all(sys.argv[1:], 10**6, 2, None, print, chunk_fn=sleepy_chunk)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie has ended
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_end_when_ingest_is_killed(tmp_path):
    """kill -9 of the ingesting process left its decoders running as orphans (issue 25.17): each worker
    now ends with the process that started the pool (PR_SET_PDEATHSIG, and a watch on that process)."""
    import signal
    import subprocess
    import sys

    paths = [str(tmp_path / f"f{i}.png") for i in range(2)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    proc = subprocess.Popen([sys.executable, "-c", DECODE_IN_CHILD, *paths], env=env)
    try:
        deadline = time.monotonic() + 60
        while not all(Path(p + ".pid").exists() for p in paths):
            assert time.monotonic() < deadline and proc.poll() is None, "the workers never started"
            time.sleep(0.1)
        time.sleep(0.2)  # the pid files are written
        workers = {int(Path(p + ".pid").read_text()) for p in paths}
        assert len(workers) == 2 and not any(_gone(w) for w in workers)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 5
    while not all(_gone(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [w for w in workers if not _gone(w)]
    for w in left:  # do not leave them behind when the test fails
        os.kill(w, signal.SIGKILL)
    assert left == [], "worker processes outlived the killed ingest"


def test_a_file_listed_twice_with_different_labels_is_a_named_conflict(tmp_path):
    """A labels CSV listing one file twice, as 'cat' and as 'dog', gave only "repeated listings were ignored"
    and kept the first label (issue 25.13): the file is rejected, and the reason and the warning name the
    file and both labels. A repeat with the same label is still only a repeat."""
    from midol_cli.data.layouts import LayoutOptions

    raw = tmp_path / "raw"
    for name in ("a.png", "b.png", "c.png"):
        write_image(raw / name)
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\na.png,cat\nb.png,cat\na.png,dog\nc.png,dog\nc.png,dog\n")
    opts = LayoutOptions(labels=csv, path_col="file", label_col="label")
    summary, df, _ = run(raw, tmp_path / "m.parquet", layout="csv", layout_options=opts)
    assert df.loc["a.png", "status"] == "rejected"
    assert df.loc["a.png", "reason"] == "conflicting labels (listed as 'cat' and as 'dog')"
    assert summary["rejects_by_reason"] == {"conflicting labels": 1}
    assert summary["label_conflicts"] == {"a.png": ["cat", "dog"]} and summary["duplicate_listings"] == 1
    assert (df.loc["b.png", "label"], df.loc["c.png", "label"]) == ("cat", "dog")
    conflict = [w for w in summary["warnings"] if w.startswith("label conflict")]
    assert conflict == ["label conflict: 1 file is listed more than once with different labels (e.g. 'a.png' "
                        "as 'cat' and as 'dog'); rejected as 'conflicting labels': fix the listing"]


def test_a_shared_manifest_waits_for_the_run_writing_it(tmp_path):
    """lock_wait (a task's cached manifest, which several probes may build at once): the second ingest
    waits for the first instead of failing, then writes (issue 25.3)."""
    import threading

    from midol_cli.locks import output_lock

    raw = tmp_path / "raw"
    make_imagefolder(raw, per_class=2)
    out = tmp_path / "cache" / "m.parquet"
    held = threading.Event()
    release = threading.Event()

    def first() -> None:
        with output_lock(out, "manifest"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=first)
    t.start()
    held.wait(10)
    with pytest.raises(UsageError, match="is being written by another midol run"):
        ingest_folder(raw, "fundus", out=out, workers=1)
    threading.Timer(0.5, release.set).start()
    lines: list[str] = []
    s = ingest_folder(raw, "fundus", out=out, workers=1, lock_wait=30, log=lines.append)
    t.join()
    assert s["ok"] == 4 and out.is_file() and lines[0].startswith("waiting for pid ")
