"""Dataset readers, writers, converters and torch datasets on synthetic fixture files of every published format."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch

from echoflow.core import read_video, tracings_from_mask, volume_from_tracings, write_video
from echoflow.data import (EchoClips, EchoFrames, LatentVideos, ReadError, TRACING_COLUMNS, assign_splits, camus_patient_names,
                           check_patient_splits, clip_indices, clip_starts, convert_cli, convert_dataset, convert_source, fold_to_split,
                           normalise_split, parse_cfg, read_camus, read_echonet, read_lvh, read_mhd, read_pediatric,
                           resize_video, split_patients, write_camus, write_echonet, write_lvh, write_pediatric)
from fixtures import (corrupt_file, ellipse_video, make_dynamic, make_latent_cache, make_lvh, make_pediatric, toy_videos,
                      truncate_nifti)

REPO = Path(__file__).resolve().parents[1]


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def chords_ef(tracings, ed, es):
    return 100 * (1 - volume_from_tracings(tracings[es]) / volume_from_tracings(tracings[ed]))


@pytest.fixture(scope="module")
def videos():
    return toy_videos(4, ("A4C", "A2C"))


# ---------------------------------------------------------------- writers: exact published layouts

def test_write_echonet_layout(tmp_path, videos):
    root = write_echonet(tmp_path/"d", videos)
    fl = pd.read_csv(root/"FileList.csv")
    assert list(fl.columns[:11]) == ["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames",
                                     "Split", "PatientID", "View"]
    assert not fl.FileName.str.endswith(".avi").any()
    assert (root/"VolumeTracings.csv").read_text().splitlines()[0] == ",".join(TRACING_COLUMNS)
    vt = pd.read_csv(root/"VolumeTracings.csv")
    assert vt.FileName.str.endswith(".avi").all()
    for v in videos:
        rows = vt[vt.FileName == v.name + ".avi"]
        assert len(rows) == 42 and list(rows.Frame.unique()) == [v.es_frame, v.ed_frame]     # 21 rows each, ES listed first
    with av.open(str(root/"Videos"/f"{videos[0].name}.avi")) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "mjpeg"
        rgb = next(c.decode(s)).to_ndarray(format="rgb24")
    assert rgb.shape == (48, 48, 3) and np.abs(rgb[..., 0].astype(int) - rgb[..., 2]).max() <= 2


def test_writers_are_atomic_and_validate(tmp_path, videos):
    out = tmp_path/"d"
    write_echonet(out, videos[:2])
    bad = videos[2].__class__(**{**videos[2].__dict__, "split": None})
    with pytest.raises(ValueError, match="split is None"):
        write_echonet(out, [videos[3], bad])
    assert sorted(pd.read_csv(out/"FileList.csv").FileName) == sorted(v.name for v in videos[:2])   # old folder intact
    assert [p.name for p in tmp_path.iterdir()] == ["d"]                                             # no temporaries left
    with pytest.raises(ValueError, match="two videos"):
        write_echonet(tmp_path/"e", [videos[0], videos[0]])
    with pytest.raises(ValueError, match="A4C and A2C"):
        write_camus(tmp_path/"c", [ellipse_video("x", "p", view="PSAX")])
    assert not (tmp_path/"e").exists() and not (tmp_path/"c").exists()


# ---------------------------------------------------------------- EchoNet-Dynamic

def test_dynamic_reader_quirks(tmp_path, videos):
    q = make_dynamic(tmp_path/"d", videos)
    src = read_echonet(tmp_path/"d")
    assert len(src) == len(videos) and not src.skipped
    t = src.table.set_index("FileName")
    assert set(t.Split) == {"TRAIN", "VAL", "TEST"}                           # 'train', 'Val' ... upper-cased
    assert q["with_ext"] in t.index                                           # FileList name with .avi kept, not dropped
    assert t.loc[q["with_ext"], "EF"] == next(v.ef for v in videos if v.name == q["with_ext"])   # and its EF stays aligned
    assert t.loc[q["one_trace"], "TracedFrames"] == 1 and pd.isna(t.loc[q["one_trace"], "EDFrame"])
    assert t.loc[q["no_trace"], "TracedFrames"] == 0
    assert (t.PatientID == t.index).all() and (t.View == "A4C").all()        # published FileList: one video per patient
    v1 = src[q["one_trace"]]
    assert v1.ed_frame is None and list(v1.extra["masks"]) == [q["one_trace_frame"]]
    for v in videos:                                                          # ED = the larger traced area, whatever the order
        if v.name in (q["one_trace"], q["no_trace"]): continue
        r = src[v.name]
        assert (r.ed_frame, r.es_frame) == (v.ed_frame, v.es_frame)
        assert r.ef == pytest.approx(v.ef) and r.split == v.split
        assert np.abs(r.frames.astype(int) - v.frames).mean() < 6            # MJPG is lossy
        for f in (v.ed_frame, v.es_frame):
            assert iou(r.extra["masks"][f], v.lv_masks[f]) > 0.85
        assert chords_ef(r.extra["tracings"], r.ed_frame, r.es_frame) == pytest.approx(v.ef, abs=6)


def test_dynamic_require_traces_is_never_silent(tmp_path, videos):
    q = make_dynamic(tmp_path/"d", videos)
    with pytest.warns(UserWarning, match="left out 2 video"):
        src = read_echonet(tmp_path/"d", require_traces=True)
    assert len(src) == len(videos) - 2
    assert "only 1 traced frame" in src.skipped[q["one_trace"]] and "no traced frame" in src.skipped[q["no_trace"]]


def test_dynamic_split_and_views_select(tmp_path, videos):
    write_echonet(tmp_path/"d", videos)
    src = read_echonet(tmp_path/"d", split="val", views=["A2C"])
    assert set(src.table.Split) == {"VAL"} and set(src.table.View) == {"A2C"} and len(src) == 1
    assert read_echonet(tmp_path/"d", split=["TRAIN", "TEST"]).table.Split.isin(["TRAIN", "TEST"]).all()


def test_integer_fold_split_in_echonet_filelist(tmp_path, videos):
    write_echonet(tmp_path/"d", videos[:3])
    fl = pd.read_csv(tmp_path/"d/FileList.csv")
    fl["Split"] = [3, 8, 9]
    fl.to_csv(tmp_path/"d/FileList.csv", index=False)
    assert read_echonet(tmp_path/"d").table.Split.tolist() == ["TRAIN", "VAL", "TEST"]


# ---------------------------------------------------------------- bad input: one clear error naming file and problem

def _edit_filelist(root, fn):
    fl = pd.read_csv(root/"FileList.csv", dtype=object)
    fn(fl)
    fl.to_csv(root/"FileList.csv", index=False)


def test_bad_filelists(tmp_path, videos):
    root = write_echonet(tmp_path/"d", videos[:3])
    _edit_filelist(root, lambda fl: fl.pop("EF"))
    with pytest.raises(ReadError, match=r"FileList.csv: missing column\(s\) \['EF'\]"):
        read_echonet(root)
    root = write_echonet(tmp_path/"d", videos[:3])
    _edit_filelist(root, lambda fl: fl.__setitem__("EF", ["55.0", "sixty", ""]))
    with pytest.raises(ReadError) as e:
        read_echonet(root)
    msg = str(e.value)
    assert "FileList.csv" in msg and "2 bad row(s)" in msg
    assert f"{videos[1].name}: EF is not a number ('sixty')" in msg and f"{videos[2].name}: EF is missing" in msg
    lenient = read_echonet(root, strict=False)                   # lenient: the good row stays, the bad ones are recorded
    assert lenient.names == [videos[0].name] and set(lenient.skipped) == {videos[1].name, videos[2].name}
    root = write_echonet(tmp_path/"d", videos[:3])
    _edit_filelist(root, lambda fl: fl.__setitem__("EF", ["55.0", "nan", "40"]))
    with pytest.raises(ReadError, match=r"V001: EF is missing \(empty or NaN\)"):
        read_echonet(root)
    root = write_echonet(tmp_path/"d", videos[:3])
    _edit_filelist(root, lambda fl: fl.__setitem__("Split", ["TRAIN", "holdout", "TEST"]))
    with pytest.raises(ReadError, match="unknown split 'holdout'"):
        read_echonet(root)


def test_missing_videos_listed_together(tmp_path, videos):
    root = write_echonet(tmp_path/"d", videos[:4])
    for v in videos[1:3]: (root/"Videos"/f"{v.name}.avi").unlink()
    with pytest.raises(FileNotFoundError) as e:
        read_echonet(root)
    assert "2 listed file(s) missing" in str(e.value)
    assert all(f"{v.name}.avi" in str(e.value) for v in videos[1:3])


def test_corrupt_avi(tmp_path, videos):
    root = write_echonet(tmp_path/"d", videos[:2])
    corrupt_file(root/"Videos"/f"{videos[1].name}.avi", keep=0.02)
    src = read_echonet(root)
    with pytest.raises(ValueError, match=rf"{videos[1].name}\.avi: cannot decode video"):
        src[1]
    assert src[0].num_frames == 16


def test_empty_and_missing_folders(tmp_path):
    (tmp_path/"empty").mkdir()
    for reader in (read_echonet, read_pediatric, read_camus, read_lvh):
        with pytest.raises(FileNotFoundError, match="folder is empty"):
            reader(tmp_path/"empty")
        with pytest.raises(FileNotFoundError, match="folder not found"):
            reader(tmp_path/"nope")
    (tmp_path/"x").mkdir(); (tmp_path/"x/readme.txt").write_text("hi")
    with pytest.raises(FileNotFoundError, match="no FileList.csv"):
        read_echonet(tmp_path/"x")
    with pytest.raises(FileNotFoundError, match="database_nifti"):
        read_camus(tmp_path/"x")


def test_bad_tracings_header(tmp_path, videos):
    root = write_echonet(tmp_path/"d", videos[:2])
    text = (root/"VolumeTracings.csv").read_text().replace("X1,Y1,X2,Y2", "x1,y1,x2,y2", 1)
    (root/"VolumeTracings.csv").write_text(text)
    with pytest.raises(ReadError, match="VolumeTracings.csv: header is FileName,x1,y1,x2,y2,Frame"):
        read_echonet(root)


# ---------------------------------------------------------------- EchoNet-Pediatric

def test_pediatric_reader(tmp_path):
    vids = toy_videos(4, ("A4C", "PSAX"))
    q = make_pediatric(tmp_path/"p", vids)
    for view in ("A4C", "PSAX"):
        fl = pd.read_csv(tmp_path/"p"/view/"FileList.csv")
        assert list(fl.columns) == ["FileName", "EF", "Sex", "Age", "Weight", "Height", "Split"]
        assert fl.FileName.str.endswith(".avi").all() and fl.Split.dtype.kind == "i"
        assert (tmp_path/"p"/view/"VolumeTracings.csv").read_text().startswith("FileName,X,Y,Frame\n")
    src = read_pediatric(tmp_path/"p")
    t = src.table.set_index("FileName")
    assert len(src) == 8 and set(t.View) == {"A4C", "PSAX"}
    assert (t.PatientID == [n.split("-")[0] for n in t.index]).all()
    assert t.Split.to_dict() == {n: v.split for n, v in zip(q["names"], vids)}            # folds mapped back
    assert (t.FPS == 25.0).all() and (t.NumberOfFrames == 16).all() and (t.FrameHeight == 48).all()   # completed from headers
    assert t.loc[q["no_trace"], "TracedFrames"] == 0
    for v, name in zip(vids[1:], q["names"][1:]):
        r = src[name]
        assert (r.ed_frame, r.es_frame) == (v.ed_frame, v.es_frame) and r.view == v.view
        assert iou(r.extra["masks"][v.ed_frame], v.lv_masks[v.ed_frame]) > 0.85
    assert len(read_pediatric(tmp_path/"p", views="PSAX")) == 4
    assert len(read_pediatric(tmp_path/"p"/"A4C")) == 4                                  # a view folder on its own


def test_all_ten_folds(tmp_path):
    vids = toy_videos(10, frames=8)
    write_pediatric(tmp_path/"p", vids)
    fl = pd.read_csv(tmp_path/"p/A4C/FileList.csv")
    fl["Split"] = range(10)
    fl.to_csv(tmp_path/"p/A4C/FileList.csv", index=False)
    t = read_pediatric(tmp_path/"p").table
    assert t.Split.tolist() == ["TRAIN"] * 8 + ["VAL", "TEST"] and t.Fold.tolist() == list(range(10))
    assert [fold_to_split(f) for f in range(10)] == ["TRAIN"] * 8 + ["VAL", "TEST"]
    with pytest.raises(ValueError, match="0-9"):
        normalise_split(11)


# ---------------------------------------------------------------- CAMUS

@pytest.fixture(scope="module")
def camus_videos():
    # tall, non-square frames catch a missing transpose; phase 0.6 puts ES before ED for some videos (a filling phase)
    vids = toy_videos(3, ("A4C", "A2C"), height=40, width=28, frames=12)
    return vids


def _half(v):
    "The ED -> ES stretch of a video in that direction (time-reversed when ES comes first)."
    step = 1 if v.ed_frame < v.es_frame else -1
    return slice(v.ed_frame, v.es_frame + step if v.es_frame + step >= 0 else None, step)


def test_camus_nifti_round_trip(tmp_path, camus_videos):
    names = camus_patient_names(camus_videos)
    write_camus(tmp_path/"c", camus_videos, reverse=[camus_videos[0].name])
    import nibabel as nib
    pdir = tmp_path/"c/database_nifti/patient0001"
    assert nib.load(str(pdir/"patient0001_4CH_half_sequence.nii.gz")).shape[:2] == (28, 40)     # stored (W, H, T)
    assert parse_cfg(pdir/"Info_4CH.cfg")["ED"] > parse_cfg(pdir/"Info_4CH.cfg")["ES"]            # stored ES -> ED
    src = read_camus(tmp_path/"c")
    assert len(src) == 6 and src.table.stored_reversed.any()
    assert (tmp_path/"c/database_split/subgroup_training.txt").read_text().split() == ["patient0001", "patient0002"]
    for v in camus_videos:
        r = src[f"{names[v.patient_id]}_{ {'A4C': '4CH', 'A2C': '2CH'}[v.view]}"]
        sl = _half(v)
        np.testing.assert_array_equal(r.frames, v.frames[sl])                       # lossless, ED first, right orientation
        np.testing.assert_array_equal(r.labels, v.labels[sl])
        np.testing.assert_array_equal(r.lv_masks, v.lv_masks[sl])
        assert (r.ed_frame, r.es_frame) == (0, r.num_frames - 1)
        assert r.ef == pytest.approx(v.ef) and r.fps == 25.0 and r.split == v.split and r.view == v.view
        assert r.extra["spacing"] == (2.0, 2.0) and r.extra["Sex"] == "F"


def test_camus_reversed_sequence_is_flipped(tmp_path):
    v = ellipse_video("a", "patient0007", frames=10, height=30, width=20)
    write_camus(tmp_path/"c", [v], reverse=["a"])
    raw = tmp_path/"c/database_nifti/patient0007"
    import nibabel as nib
    stored = np.asarray(nib.load(str(raw/"patient0007_4CH_half_sequence.nii.gz")).dataobj).transpose(2, 1, 0)
    n = len(stored)
    cfg = parse_cfg(raw/"Info_4CH.cfg")
    assert (cfg["ED"], cfg["ES"], cfg["NbFrame"]) == (n, 1, n)
    r = read_camus(tmp_path/"c")[0]
    np.testing.assert_array_equal(r.frames, stored[::-1])
    np.testing.assert_array_equal(r.frames, v.frames[v.ed_frame:v.es_frame + 1])


def test_parse_cfg_first_colon_and_lvef_alias(tmp_path):
    p = tmp_path/"Info_4CH.cfg"
    p.write_text("ED: 1\nES: 13\nNbFrame: 13\nSex: M\nAge: 57\nImageQuality: Medium\nLVedv: 120.5\nLVesv: 60.2\nLVef: 50\nNote: a: b\n")
    cfg = parse_cfg(p)
    assert cfg["EF"] == 50 and cfg["Note"] == "a: b" and cfg["LVedv"] == 120.5 and cfg["ED"] == 1
    p.write_text("ED 1\n")
    with pytest.raises(ReadError, match="line 1 is not 'Key: value'"):
        parse_cfg(p)


def test_camus_mhd_release(tmp_path, camus_videos):
    vids = [v.__class__(**{**v.__dict__, "split": s}) for v, s in zip(camus_videos, ["TRAIN"] * 2 + ["VAL"] * 2 + ["TEST"] * 2)]
    write_camus(tmp_path/"m", vids, release="mhd")
    assert (tmp_path/"m/training/patient0001/patient0001_4CH_sequence.raw").exists()
    assert not list((tmp_path/"m/testing").rglob("*_gt.mhd"))                      # test labels held back
    cfg = parse_cfg(tmp_path/"m/training/patient0001/Info_4CH.cfg")
    assert "LVef" in cfg and "FrameRate" not in cfg
    arr, spacing = read_mhd(tmp_path/"m/training/patient0001/patient0001_4CH_sequence.mhd")
    assert arr.shape[1:] == (40, 28) and spacing == (2.0, 2.0, 1.0)
    with pytest.warns(UserWarning, match="no FrameRate"):
        src = read_camus(tmp_path/"m")
    assert src.info["release"] == "mhd" and src.table.FPS.isna().all()
    assert dict(zip(src.table.PatientID, src.table.Split)) == {"patient0001": "TRAIN", "patient0002": "VAL", "patient0003": "TEST"}
    src = read_camus(tmp_path/"m", default_fps=30)
    for v in vids:
        pid = camus_patient_names(vids)[v.patient_id]
        r = src[f"{pid}_{ {'A4C': '4CH', 'A2C': '2CH'}[v.view]}"]
        np.testing.assert_array_equal(r.frames, v.frames[_half(v)])
        assert r.ef == pytest.approx(v.ef) and r.edv == pytest.approx(v.edv) and r.fps == 30
        if v.split != "TEST":
            for f in (r.ed_frame, r.es_frame):                                        # ED/ES labels only in this release
                np.testing.assert_array_equal(r.extra["masks"][f], v.lv_masks[_half(v)][f])
        else:
            assert "masks" not in r.extra


def test_camus_bad_files(tmp_path, camus_videos):
    write_camus(tmp_path/"c", camus_videos[:2])
    seq = tmp_path/"c/database_nifti/patient0001/patient0001_4CH_half_sequence.nii.gz"
    truncate_nifti(seq)
    src = read_camus(tmp_path/"c")
    with pytest.raises(ReadError, match=r"patient0001_4CH_half_sequence.nii.gz: cannot read NIfTI .*truncated or corrupt"):
        src["patient0001_4CH"]
    seq.write_bytes(b"not a nifti")
    with pytest.raises(ReadError, match="patient0001_4CH_half_sequence.nii.gz: cannot read NIfTI header"):
        read_camus(tmp_path/"c")
    write_camus(tmp_path/"m", camus_videos[:2], release="mhd")
    corrupt_file(tmp_path/"m/training/patient0001/patient0001_4CH_sequence.raw", keep=0.5)
    with pytest.raises(ReadError, match=r"patient0001_4CH_sequence.mhd: data holds \d+ bytes, DimSize .* \(truncated\?\)"):
        read_camus(tmp_path/"m", default_fps=25)["patient0001_4CH"]
    cfg = tmp_path/"m/training/patient0001/Info_2CH.cfg"
    cfg.write_text(cfg.read_text().replace("LVef", "LVxx"))
    with pytest.raises(ReadError, match="Info_2CH.cfg: EF is missing"):
        read_camus(tmp_path/"m")


# ---------------------------------------------------------------- EchoNet-LVH

def test_lvh_reader(tmp_path):
    vids = toy_videos(3, ("A4C",), height=30, width=44, frames=10)
    vids = [v.__class__(**{**v.__dict__, "view": "PLAX"}) for v in vids]
    make_lvh(tmp_path/"l", vids)
    head = (tmp_path/"l/MeasurementsList.csv").read_text().splitlines()
    assert head[0].startswith(",HashedFileName,Calc,CalcValue,Frame,X1,X2,Y1,Y2,Frames,FPS,Width,Height,split")
    assert head[1].endswith(",train")
    src = read_lvh(tmp_path/"l")
    t = src.table.set_index("FileName")
    assert (t.FrameHeight == 30).all() and (t.FrameWidth == 44).all() and (t.View == "PLAX").all()
    assert {"IVSd", "LVIDd", "LVPWd", "LVIDs"} <= set(t.columns) and t.EF.isna().all()
    assert t.Split.tolist() == ["TRAIN", "TRAIN", "VAL"]
    r = src[vids[0].name]
    assert r.frames.shape == (10, 30, 44) and r.ef is None and len(r.extra["measurements"]) == 4
    lvidd = next(m for m in r.extra["measurements"] if m["Calc"] == "LVIDd")
    assert lvidd["CalcValue"] == pytest.approx(np.hypot(lvidd["X2"] - lvidd["X1"], lvidd["Y2"] - lvidd["Y1"]) * 2.0 / 10)
    assert next(m for m in r.extra["measurements"] if m["Calc"] == "IVSd")["CalcValue"] == pytest.approx(0.6, abs=0.15)  # 3 px ring
    (tmp_path/"l/Batch1"/f"{vids[2].name}.avi").unlink()
    with pytest.raises(FileNotFoundError, match=f"{vids[2].name}.avi"):
        read_lvh(tmp_path/"l")
    assert len(read_lvh(tmp_path/"l", strict=False)) == 2


# ---------------------------------------------------------------- converters

def test_convert_dynamic_keeps_rescaled_tracings(tmp_path, videos):
    q = make_dynamic(tmp_path/"d", videos)
    rep = convert_dataset("dynamic", tmp_path/"d", tmp_path/"out", size=32, progress=False)
    assert len(rep.converted) == len(videos) and not rep.skipped
    src, can = read_echonet(tmp_path/"d"), read_echonet(tmp_path/"out")
    assert can["V000"].frames.shape == (16, 32, 32)
    t = can.table.set_index("FileName")
    assert t.loc[q["one_trace"], "TracedFrames"] == 1 and t.loc[q["no_trace"], "TracedFrames"] == 0
    for name in src.names:
        a, b = src[name], can[name]
        assert b.ef == a.ef and b.split == a.split and (b.ed_frame, b.es_frame) == (a.ed_frame, a.es_frame)
        for f, tr in a.extra.get("tracings", {}).items():           # same chords, scaled by 32/48 about pixel centres
            np.testing.assert_allclose(b.extra["tracings"][f], (tr + 0.5) * 32 / 48 - 0.5, atol=1e-6)
        if a.ed_frame is not None:
            assert chords_ef(b.extra["tracings"], b.ed_frame, b.es_frame) == pytest.approx(
                chords_ef(a.extra["tracings"], a.ed_frame, a.es_frame), abs=1e-6)
    report = json.loads((tmp_path/"out/conversion_report.json").read_text())
    assert report["converted"] == len(videos) and report["size"] == 32


def test_convert_skips_bad_items_and_reports(tmp_path, videos):
    root = write_echonet(tmp_path/"d", videos[:4])
    corrupt_file(root/"Videos"/"V001.avi", keep=0.02)
    (root/"Videos"/"V002.avi").unlink()
    _edit_filelist(root, lambda fl: fl.__setitem__("EF", ["50", "50", "50", "abc"]))
    rep = convert_dataset("dynamic", root, tmp_path/"out", size=32, progress=False)
    assert rep.converted == ["V000"]
    assert "cannot decode video" in rep.skipped["V001"] and "not found" in rep.skipped["V002"]
    assert "EF is not a number ('abc')" in rep.skipped["V003"]
    assert read_echonet(tmp_path/"out").names == ["V000"]
    assert "skipped 3" in rep.summary()


def test_convert_never_leaves_half_output(tmp_path, videos):
    root = write_echonet(tmp_path/"d", videos[:2])
    for v in videos[:2]: corrupt_file(root/"Videos"/f"{v.name}.avi", keep=0.02)
    with pytest.raises(ValueError, match="nothing converted"):
        convert_dataset("dynamic", root, tmp_path/"out", size=32, progress=False)
    assert not (tmp_path/"out").exists() and [p.name for p in tmp_path.iterdir()] == ["d"]


def test_convert_camus_derives_chords(tmp_path, camus_videos):
    write_camus(tmp_path/"c", camus_videos)
    rep = convert_dataset("camus", tmp_path/"c", tmp_path/"out", size=32, progress=False)
    assert len(rep.converted) == 6
    can, cam = read_echonet(tmp_path/"out"), read_camus(tmp_path/"c")
    assert set(can.table.View) == {"A4C", "A2C"} and set(can.table.PatientID) == {"patient0001", "patient0002", "patient0003"}
    for name in cam.names:
        a, b = cam[name], can[name]
        assert b.frames.shape[1:] == (32, 32) and b.num_frames == a.num_frames and b.ef == a.ef
        assert (b.ed_frame, b.es_frame) == (0, a.num_frames - 1)
        ef_a = chords_ef({0: tracings_from_mask(a.lv_masks[0]), 1: tracings_from_mask(a.lv_masks[-1])}, 0, 1)
        assert chords_ef(b.extra["tracings"], b.ed_frame, b.es_frame) == pytest.approx(ef_a, abs=5)   # pad keeps the aspect
        # the masks drawn from the chords match the resized labels
        lab = resize_video(a, 32, "pad").lv_masks
        assert iou(b.extra["masks"][0], lab[0]) > 0.8


def test_convert_lvh_and_pediatric(tmp_path):
    vids = [v.__class__(**{**v.__dict__, "view": "PLAX"}) for v in toy_videos(2, height=30, width=44, frames=8)]
    write_lvh(tmp_path/"l", vids)
    convert_dataset("lvh", tmp_path/"l", tmp_path/"lo", size=24, progress=False)
    can = read_echonet(tmp_path/"lo", require_ef=False)
    assert can["V000"].frames.shape == (8, 24, 24) and can.table.EF.isna().all() and "LVIDd" in can.table
    with pytest.raises(ReadError, match="EF is missing"):
        read_echonet(tmp_path/"lo")
    pvids = toy_videos(3, ("A4C", "PSAX"), frames=8)
    q = make_pediatric(tmp_path/"p", pvids)
    rep = convert_dataset("pediatric", tmp_path/"p", tmp_path/"po", size=32, progress=False)
    assert len(rep.converted) == 6
    can = read_echonet(tmp_path/"po")
    t = can.table.set_index("FileName")
    assert set(t.View) == {"A4C", "PSAX"} and t.loc[q["no_trace"], "TracedFrames"] == 0 and (t.TracedFrames[1:] == 2).all()
    assert (t.PatientID == [n.split("-")[0] for n in t.index]).all()


@pytest.mark.parametrize("kind,writer", [("dynamic", write_echonet), ("camus", write_camus), ("pediatric", write_pediatric),
                                         ("lvh", write_lvh)])
def test_convert_cli(tmp_path, capsys, kind, writer):
    vids = toy_videos(2, ("A4C",), frames=8, height=32, width=40)
    if kind == "lvh": vids = [v.__class__(**{**v.__dict__, "view": "PLAX"}) for v in vids]
    writer(tmp_path/"src", vids)
    assert convert_cli(kind, ["--root", str(tmp_path/"src"), "--out", str(tmp_path/"out"), "--size", "24", "--quiet"]) == 0
    assert "converted 2, skipped 0" in capsys.readouterr().out
    assert len(read_echonet(tmp_path/"out", require_ef=kind != "lvh")) == 2
    assert convert_cli(kind, ["--root", str(tmp_path/"nope"), "--out", str(tmp_path/"out2"), "--size", "24"]) == 1
    assert "folder not found" in capsys.readouterr().out and not (tmp_path/"out2").exists()


def test_data_prep_script_runs(tmp_path):
    "The thin script itself, in a fresh interpreter, with a bad video among good ones."
    root = write_echonet(tmp_path/"src", toy_videos(3, frames=8, height=32, width=32))
    corrupt_file(root/"Videos"/"V001.avi", keep=0.02)
    assert {p.name for p in (REPO/"data_prep").glob("*.py")} >= {"echonet_dynamic.py", "echonet_pediatric.py", "camus.py", "echonet_lvh.py"}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, str(REPO/"data_prep/echonet_dynamic.py"), "--root", str(root), "--out",
                        str(tmp_path/"out"), "--size", "24"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "converted 2, skipped 1" in r.stdout and "V001" in r.stdout and "cannot decode video" in r.stdout
    assert "converting src" in r.stderr                                   # the progress bar
    assert read_echonet(tmp_path/"out").names == ["V000", "V002"]


# ---------------------------------------------------------------- clip sampling, pinned against hand-computed indices

def test_clip_indices_by_hand():
    idx, pad = clip_indices(10, 4, 2, start=1)
    assert idx.tolist() == [1, 3, 5, 7] and not pad.any()
    assert clip_starts(10, 4, 2) == 4                       # starts 0..3: start 3 -> 3,5,7,9
    idx, pad = clip_indices(10, 4, 2, start=3)
    assert idx.tolist() == [3, 5, 7, 9]
    with pytest.raises(ValueError, match="start 4 out of range"):
        clip_indices(10, 4, 2, start=4)
    # short video: 5 frames, 4 x period 2 -> padded to 8 frames, starts 0..1
    assert clip_starts(5, 4, 2) == 2
    idx, pad = clip_indices(5, 4, 2, start=1)
    assert idx.tolist() == [1, 3, -1, -1] and pad.tolist() == [False, False, True, True]
    idx, pad = clip_indices(5, 4, 2, start=0)
    assert idx.tolist() == [0, 2, 4, -1] and pad.tolist() == [False, False, False, True]
    # EchoNet reference: 32 frames, period 2 on a 100-frame video -> 38 starts, last clip ends on frame 99
    assert clip_starts(100, 32, 2) == 38 and clip_indices(100, 32, 2, start=37)[0][-1] == 99
    # resampling 50 fps -> 20 fps: step 2.5 frames, rounded half up: 0, 2.5, 5, 7.5 -> 0, 3, 5, 8
    idx, _ = clip_indices(20, 4, 1, fps=50, target_fps=20)
    assert idx.tolist() == [0, 3, 5, 8]
    assert clip_starts(20, 4, 1, fps=50, target_fps=20) == 12     # start + 7.5 + 0.5 < 20  ->  start <= 11
    with pytest.raises(ValueError, match="needs the video's fps"):
        clip_indices(20, 4, 1, target_fps=20)
    with pytest.raises(ValueError, match="period must be an int >= 1"):
        clip_indices(20, 4, 0)


def test_echo_clips_padding_and_mask(tmp_path):
    v = ellipse_video("S", "p", frames=5, height=16, width=16)
    write_echonet(tmp_path/"d", [v])
    ds = EchoClips(tmp_path/"d", length=4, period=2, clips="all", pad_value=0.0)
    item = ds[0]
    assert item["video"].shape == (2, 1, 4, 16, 16) and item["start"].tolist() == [0, 1]
    assert item["pad_mask"].tolist() == [[False, False, False, True], [False, False, True, True]]
    frames = read_video(tmp_path/"d/Videos/S.avi")[0]
    unit = torch.from_numpy(frames).float() / 127.5 - 1
    torch.testing.assert_close(item["video"][1, 0, :2], unit[[1, 3]])
    assert (item["video"][1, 0, 2:] == 0).all() and (item["video"][0, 0, 3] == 0).all()
    torch.manual_seed(0)
    ds = EchoClips(tmp_path/"d", length=4, period=2)
    starts = {ds[0]["start"] for _ in range(40)}
    assert starts == {0, 1}
    ref = EchoClips.reference(tmp_path/"d")
    assert ref.length == 32 and ref.period == 2 and ref[0]["pad_mask"].sum() >= 32 - 3
    ds = EchoClips(tmp_path/"d", length=3, period=1, target_fps=12.5, random_start=False, pad_value=-1.0)
    item = ds[0]                                               # 25 fps -> 12.5 fps: frames 0, 2, 4
    torch.testing.assert_close(item["video"][0], unit[[0, 2, 4]])
    assert not item["pad_mask"].any()


def test_echo_frames(tmp_path, videos):
    write_echonet(tmp_path/"d", videos)
    ds = EchoFrames(tmp_path/"d", split="TRAIN", frames_per_video=2, frame_choice="ed_es")
    assert len(ds) == 8 and ds.patients == ["PAT000", "PAT001"]
    it = ds[0]
    v = next(v for v in videos if v.name == it["name"])
    assert it["frame"].shape == (1, 48, 48) and it["frame"].dtype == torch.float32
    assert -1 <= it["frame"].min() and it["frame"].max() <= 1
    assert it["frame_index"] == v.ed_frame and ds[1]["frame_index"] == v.es_frame and it["ef"] == v.ef
    assert it["patient"] == ds.patients.index(v.patient_id)
    ds = EchoFrames(tmp_path/"d", size=32, frames_per_video=3, frame_choice="even", views="A2C")
    assert [ds[i]["frame_index"] for i in range(3)] == [0, 8, 15] and ds[0]["frame"].shape == (1, 32, 32)
    with pytest.raises(ValueError, match="frame_choice"):
        EchoFrames(tmp_path/"d", frame_choice="middle")
    with pytest.raises(ValueError, match="no videos for split"):
        EchoFrames(tmp_path/"d", split="TRAIN", views="PSAX")


# ---------------------------------------------------------------- latent cache

def test_latent_videos(tmp_path, videos):
    lat = make_latent_cache(tmp_path/"c", videos[:4], lengths=[5, 9, 12, 3])
    ds = LatentVideos(tmp_path/"c", max_frames=8)
    scale = json.loads((tmp_path/"c/scaling.json").read_text())
    mean, std = torch.tensor(scale["mean"]), torch.tensor(scale["std"])
    it = ds[0]
    assert it["latents"].shape == (4, 8, 6, 6) and it["n_frames"] == 5
    assert it["pad_mask"].tolist() == [False] * 5 + [True] * 3
    expect = (lat["V000"] - mean[None, :, None, None]) / std[None, :, None, None]
    torch.testing.assert_close(it["latents"][:, :5], expect.permute(1, 0, 2, 3))
    assert (it["latents"][:, 5:] == 0).all()
    all_z = torch.cat([(z - mean[None, :, None, None]) / std[None, :, None, None] for z in lat.values()])
    torch.testing.assert_close(all_z.mean((0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(all_z.std((0, 2, 3)), torch.ones(4), atol=1e-5, rtol=0)
    it = ds[2]                                                 # 12 frames > 8: linspace indices
    idx = np.round(np.linspace(0, 11, 8)).astype(int)
    assert idx.tolist() == [0, 2, 3, 5, 6, 8, 9, 11] and not it["pad_mask"].any()
    torch.testing.assert_close(it["latents"], ((lat["V002"][idx] - mean[None, :, None, None]) / std[None, :, None, None]).permute(1, 0, 2, 3))
    assert LatentVideos(tmp_path/"c", max_frames=8, long="start")[2]["latents"].shape[1] == 8
    assert len(LatentVideos(tmp_path/"c", split="TRAIN")) == 4
    with pytest.raises(ValueError, match="no latent videos for split='VAL'"):
        LatentVideos(tmp_path/"c", split="VAL")


def test_latent_cache_errors(tmp_path, videos):
    make_latent_cache(tmp_path/"c", videos[:3])
    (tmp_path/"c/latents/V001.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="V001.safetensors"):
        LatentVideos(tmp_path/"c")
    make_latent_cache(tmp_path/"c", videos[:3])
    (tmp_path/"c/scaling.json").write_text(json.dumps({"mean": [0, 0, 0], "std": [1, 1, 1]}))
    with pytest.raises(ReadError, match=r"latents must be \(T, C=3, h, w\) to match scaling.json"):
        LatentVideos(tmp_path/"c")[0]
    (tmp_path/"c/scaling.json").write_text(json.dumps({"mean": [0, 0, 0, 0], "std": [1, 0, 1, 1]}))
    with pytest.raises(ReadError, match="every std must be positive"):
        LatentVideos(tmp_path/"c")


# ---------------------------------------------------------------- patient splits

def test_patient_splits():
    ids = [f"P{i}" for i in range(20)]
    s = split_patients(ids, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert pd.Series(s).value_counts().to_dict() == {"TRAIN": 14, "TEST": 4, "VAL": 2}
    assert s == split_patients(ids[::-1], val_fraction=0.1, test_fraction=0.2, seed=3)
    assert s != split_patients(ids, val_fraction=0.1, test_fraction=0.2, seed=4)
    assert set(split_patients(["a", "b", "c"], val_fraction=0.01, test_fraction=0.01).values()) == {"TRAIN", "VAL", "TEST"}
    t = assign_splits(pd.DataFrame({"PatientID": ids * 3}), seed=1)
    check_patient_splits(t)
    with pytest.raises(ValueError, match=r"1 patient\(s\) in more than one split: P0"):
        check_patient_splits(pd.DataFrame({"PatientID": ["P0", "P0", "P1"], "Split": ["TRAIN", "VAL", "TEST"]}))
    with pytest.raises(ValueError, match="val_fraction"):
        split_patients(ids, val_fraction=1.5)


# ---------------------------------------------------------------- phantom round trips: phantom -> writer -> reader

@pytest.fixture(scope="module")
def phantom():
    from echoflow.phantom import phantom_videos
    return phantom_videos(patients=3, videos_per_patient=1, frames=16, size=64, views=("A4C", "A2C"), seed=3)


def test_phantom_echonet_round_trip(tmp_path, phantom):
    write_echonet(tmp_path/"d", phantom)
    src = read_echonet(tmp_path/"d", require_traces=True)
    assert len(src) == len(phantom) and not src.skipped
    fl = pd.read_csv(tmp_path/"d/FileList.csv")
    assert {"HR", "Sex", "Age", "ImageQuality"} <= set(fl.columns)           # the phantom's scalar extras ride along
    for v in phantom:
        r = src[v.name]
        assert (r.ef, r.edv, r.esv) == (v.ef, v.edv, v.esv)
        assert (r.ed_frame, r.es_frame) == (v.ed_frame, v.es_frame)
        assert (r.patient_id, r.view, r.split) == (v.patient_id, v.view, v.split)
        for f in (v.ed_frame, v.es_frame):
            np.testing.assert_allclose(r.extra["tracings"][f], v.extra["tracings"][f], rtol=0, atol=1e-9)
            assert iou(r.extra["masks"][f], v.lv_masks[f]) > 0.85
        assert chords_ef(r.extra["tracings"], r.ed_frame, r.es_frame) == pytest.approx(
            chords_ef(v.extra["tracings"], v.ed_frame, v.es_frame), abs=1e-6)
        assert np.abs(r.frames.astype(int) - v.frames).mean() < 4


def test_phantom_camus_round_trip(tmp_path, phantom):
    from echoflow.phantom import export_phantom
    write_camus(tmp_path/"c", phantom)
    src, names = read_camus(tmp_path/"c"), camus_patient_names(phantom)
    assert sorted(src.table.Split) == sorted(v.split for v in phantom)
    for v in phantom:
        r = src[f"{names[v.patient_id]}_{ {'A4C': '4CH', 'A2C': '2CH'}[v.view]}"]
        np.testing.assert_array_equal(r.frames, v.frames[_half(v)])
        np.testing.assert_array_equal(r.labels, v.labels[_half(v)])
        assert r.ef == pytest.approx(v.ef, abs=1e-9) and r.fps == v.fps and (r.ed_frame, r.es_frame) == (0, r.num_frames - 1)
        assert r.extra["spacing"] == pytest.approx((v.extra["pixel_mm"],) * 2)
    export_phantom(tmp_path/"e", "camus", patients=2, videos_per_patient=1, frames=12, size=32)   # the phantom's own exporter
    assert len(read_camus(tmp_path/"e")) == 2


def test_phantom_pediatric_and_lvh_round_trip(tmp_path, phantom):
    write_pediatric(tmp_path/"p", phantom)
    src = read_pediatric(tmp_path/"p")
    for v in phantom:
        r = src[v.name]
        assert r.ef == v.ef and (r.ed_frame, r.es_frame) == (v.ed_frame, v.es_frame) and r.split == v.split
        assert r.patient_id == v.patient_id and r.extra["Sex"] == v.extra["Sex"]
        assert iou(r.extra["masks"][v.ed_frame], v.lv_masks[v.ed_frame]) > 0.85
    write_lvh(tmp_path/"l", phantom)
    lvh = read_lvh(tmp_path/"l")
    for v in phantom:
        r = lvh[v.name]
        calcs = {m["Calc"]: m for m in r.extra["measurements"]}
        assert set(calcs) == {"LVIDd", "LVIDs", "IVSd", "LVPWd"}
        chords = v.extra["tracings"][v.ed_frame][1:]
        widest = np.hypot(chords[:, 2] - chords[:, 0], chords[:, 3] - chords[:, 1]).max()
        assert calcs["LVIDd"]["CalcValue"] == pytest.approx(widest * v.extra["pixel_mm"] / 10)
        assert 0.3 < calcs["IVSd"]["CalcValue"] < 2.5                         # a myocardium run of a few mm to a couple of cm


def test_phantom_convert_keeps_ef(tmp_path, phantom):
    write_echonet(tmp_path/"d", phantom)
    rep = convert_dataset("dynamic", tmp_path/"d", tmp_path/"out", size=32, progress=False)
    assert len(rep.converted) == len(phantom)
    can = read_echonet(tmp_path/"out", require_traces=True)
    for v in phantom:
        r = can[v.name]
        assert r.frames.shape[1:] == (32, 32) and r.ef == v.ef and (r.ed_frame, r.es_frame) == (v.ed_frame, v.es_frame)
        assert chords_ef(r.extra["tracings"], r.ed_frame, r.es_frame) == pytest.approx(
            chords_ef(v.extra["tracings"], v.ed_frame, v.es_frame), abs=1e-6)
