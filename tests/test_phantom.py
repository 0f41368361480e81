"""EchoPhantom: EF by construction vs EF from the rendered masks, ED/ES, speckle statistics, patient identity,
exporters read back by the real readers, the command line, the stage, and bad parameters."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from echoflow.core import ejection_fraction, load_preset, lv_volume, mask_area, read_video, volume_from_tracings
from echoflow.phantom import (PatientParams, envelope_snr, export_phantom, phantom_stage, phantom_videos, render_video,
                              render_videos, sample_ef, sample_patients, speckle_correlation, split_patients, volume_curve)

REPO = Path(__file__).resolve().parents[1]


def near_extreme(area, frame, largest: bool, rel: float = 0.003) -> bool:
    "Is `frame` within 1 frame of a frame whose mask area is the extreme (up to `rel` of pixel-count noise)?"
    best = area.max() if largest else area.min()
    ok = np.nonzero(area >= best * (1 - rel) if largest else area <= best * (1 + rel))[0]
    return bool(np.min(np.abs(ok - frame)) <= 1)


def ef_errors(size: int, n: int, seed: int):
    "Render n A4C videos with EF spread over [10, 85]; EF errors of the masks and the analytic tracings, ED/ES checks."
    patients = sample_patients(n, seed=seed, ef_distribution="uniform")
    efs = np.linspace(10, 85, n)
    videos = render_videos(patients, frames=40, size=size, seeds=list(range(n)), efs=list(efs), labels=False)
    rows = []
    for v, ef in zip(videos, efs):
        assert v.ef == pytest.approx(ef, abs=1e-3)
        area = mask_area(v.lv_masks)
        ef_mask = ejection_fraction(lv_volume(v.lv_masks[v.ed_frame]), lv_volume(v.lv_masks[v.es_frame]))
        tr = v.extra["tracings"]
        ef_trace = ejection_fraction(volume_from_tracings(tr[v.ed_frame]), volume_from_tracings(tr[v.es_frame]))
        rows.append((ef_mask - ef, ef_trace - ef, near_extreme(area, v.ed_frame, True), near_extreme(area, v.es_frame, False)))
    return np.array(rows, dtype=float)


# ---------------------------------------------------------------- EF, ED and ES by construction

def test_ef_from_masks_at_112px():
    r = ef_errors(112, 12, seed=7)
    print(f"112 px: EF(masks) - EF mean {r[:, 0].mean():+.2f}, max |err| {np.abs(r[:, 0]).max():.2f}")
    assert np.abs(r[:, 0]).max() <= 1.5                        # method of disks on the rendered masks
    assert np.abs(r[:, 1]).max() <= 0.2                        # the exported tracing rows
    assert r[:, 2].all() and r[:, 3].all()                     # ED / ES are frames of largest / smallest LV area


def test_ef_from_masks_at_64px():
    r = ef_errors(64, 12, seed=4)
    print(f"64 px: EF(masks) - EF mean {r[:, 0].mean():+.2f}, mean |err| {np.abs(r[:, 0]).mean():.2f}, max {np.abs(r[:, 0]).max():.2f}")
    assert np.abs(r[:, 0]).mean() <= 1.5 and np.abs(r[:, 0]).max() <= 4.0   # coarser masks: ~2 mm pixels
    assert np.abs(r[:, 1]).max() <= 0.2


def test_volume_curve_phases():
    t = np.linspace(0, 60 / 70, 4001)
    v = volume_curve(t, hr=70, ef=40)
    assert v.max() == pytest.approx(1.0) and v.min() == pytest.approx(0.6)
    assert t[np.argmin(v)] < 0.5 * t[-1]                       # systole is the shorter part of the cycle at 70 bpm
    assert np.abs(np.diff(v)).max() < 2e-3                     # continuous


def test_short_clips_hold_an_ed_and_its_es():
    for v in phantom_videos(patients=6, videos_per_patient=2, frames=16, size=32):
        vc = v.extra["volume_curve"]
        assert v.es_frame > v.ed_frame
        assert 1 - vc[v.es_frame] / vc[v.ed_frame] == pytest.approx(v.ef / 100, abs=0.03)


# ---------------------------------------------------------------- speckle

def test_envelope_snr_of_homogeneous_tissue_is_rayleigh():
    p = sample_patients(2, seed=1)[1]
    for size in (64, 112):
        env = render_video(p, frames=4, size=size, seed=2, homogeneous=True, return_envelope=True).extra["envelope"]
        R, A = env.shape[1:]
        centre = env[:, R // 4:3 * R // 4, A // 4:3 * A // 4]
        assert envelope_snr(centre) == pytest.approx(1.91, abs=0.15)
        assert (20 * np.log10(centre)).std() == pytest.approx(5.57, abs=0.5)


def test_tissue_speckle_moves_with_the_tissue_and_blood_decorrelates():
    p = sample_patients(3, seed=2)[2]
    v = render_video(p, frames=10, size=64, seed=1, return_envelope=True)
    U = v.extra["beam_material"][:, 0]
    mid = (U > 0.25 * p.lv_length) & (U < p.lv_length - 30)
    tissue = speckle_correlation(v, (2,))
    blood = speckle_correlation(v, (1,), erode=3, region=mid)
    print("tissue", np.round(tissue, 2), "blood", np.round(blood, 2))
    assert np.nanmean(tissue) > 0.8 and np.nanmin(tissue) > 0.7
    assert np.nanmean(np.abs(blood)) < 0.3
    assert np.isfinite(tissue).all()


def test_blood_is_dark_and_outside_the_sector_is_black():
    v = render_video(sample_patients(1, seed=5)[0], frames=8, size=64, seed=0)
    assert v.frames[v.labels == 1].mean() < 0.3 * v.frames[v.labels == 2].mean()
    corner = np.zeros((64, 64), bool); corner[:8, :8] = corner[:8, -8:] = True
    assert v.frames[:, corner].max() == 0


# ---------------------------------------------------------------- identity, determinism, batching

def test_same_patient_videos_are_more_alike():
    patients = sample_patients(6, seed=11)
    videos = render_videos([p for p in patients for _ in range(3)], frames=12, size=48, seeds=[0, 1, 2] * 6)
    f = torch.stack([F.adaptive_avg_pool2d(torch.tensor(v.frames, dtype=torch.float32).mean(0)[None, None], 16).flatten() for v in videos])
    f = f - f.mean(1, keepdim=True); f = f / f.norm(dim=1, keepdim=True)
    sim = (f @ f.T).numpy()
    pid = np.array([v.patient_id for v in videos])
    same = (pid[:, None] == pid[None]) & ~np.eye(len(pid), dtype=bool)
    assert sim[same].mean() > sim[pid[:, None] != pid[None]].mean() + 0.02
    np.fill_diagonal(sim, -np.inf)
    assert (pid[sim.argmax(1)] == pid).mean() > 0.3           # chance is 2/17


def test_patients_and_videos_are_reproducible_and_batch_independent():
    a, b = sample_patients(5, seed=1), sample_patients(9, seed=1)
    assert a == b[:5] and a != sample_patients(5, seed=2)
    alone = render_video(a[3], frames=6, size=32, seed=4)
    batch = render_videos([a[0], a[3], a[1]], frames=6, size=32, seeds=[0, 4, 1])
    assert np.array_equal(alone.frames, batch[1].frames) and np.array_equal(alone.labels, batch[1].labels)
    assert not np.array_equal(alone.frames, render_video(a[3], frames=6, size=32, seed=5).frames)


def test_ef_distributions():
    ef = sample_ef(np.random.default_rng(0), 20000, "echonet")
    assert ef.mean() == pytest.approx(55.5, abs=1.0) and ef.std() == pytest.approx(12, abs=1.0)
    assert ef.min() >= 8 and ef.max() <= 85 and np.mean(ef < 40) > 0.12      # the long low tail
    u = sample_ef(np.random.default_rng(0), 20000, "uniform")
    assert u.min() >= 10 and u.max() <= 90 and abs(u.mean() - 50) < 1


@pytest.mark.parametrize("view", ["A2C", "PSAX"])
def test_other_views(view):
    v = render_video(sample_patients(1, seed=6, view=view)[0], frames=24, size=64, seed=0)
    assert v.view == view
    area = mask_area(v.lv_masks)
    assert area.min() > 20 and area.max() / area.min() > 1.2     # a beating LV in every frame
    assert set(np.unique(v.labels)) <= {0, 1, 2, 3} and (v.labels == 2).any()


# ---------------------------------------------------------------- datasets, exporters, stage, command line

def test_splits_are_by_patient():
    videos = phantom_videos(patients=12, videos_per_patient=2, frames=8, size=32, views=("A4C", "A2C"))
    assert len(videos) == 48
    splits = {}
    for v in videos: splits.setdefault(v.patient_id, set()).add(v.split)
    assert all(len(s) == 1 for s in splits.values())
    assert {s for ss in splits.values() for s in ss} == {"TRAIN", "VAL", "TEST"}
    assert split_patients(["a", "b"], 0.5, 0.4)["a"] in ("TRAIN", "VAL", "TEST")
    assert "TRAIN" in split_patients(["a", "b"], 0.5, 0.49).values()


def test_export_echonet_reads_back(tmp_path):
    from echoflow.data import read_echonet
    root = export_phantom(tmp_path / "echonet", patients=4, videos_per_patient=1, frames=24, size=48, seed=2)
    fl = pd.read_csv(root / "FileList.csv")
    assert list(fl.columns[:11]) == ["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames",
                                     "Split", "PatientID", "View"]
    assert (root / "VolumeTracings.csv").read_text().splitlines()[0] == "FileName,X1,Y1,X2,Y2,Frame"
    src = read_echonet(root)
    for i in range(len(fl)):
        v = src.load(i)
        tr = v.extra["tracings"]
        ef = 100 * (1 - volume_from_tracings(tr[v.es_frame]) / volume_from_tracings(tr[v.ed_frame]))
        assert ef == pytest.approx(v.ef, abs=0.2)               # the tracings imply the EF in FileList.csv
        assert v.frames.shape == (24, 48, 48)


def test_export_camus_and_pediatric(tmp_path):
    from echoflow.data import read_camus, read_pediatric
    camus = export_phantom(tmp_path / "camus", format="camus", patients=3, videos_per_patient=1, frames=24, size=32,
                           views=("A4C", "A2C"), val_fraction=0.34, test_fraction=0.34)
    src = read_camus(camus)
    v = src.load(0)
    assert v.labels is not None and set(np.unique(v.labels)) <= {0, 1, 2, 3} and (v.labels == 3).any()
    ped = export_phantom(tmp_path / "ped", format="pediatric", patients=3, videos_per_patient=1, frames=16, size=32,
                         views=("A4C", "PSAX"))
    assert (ped / "A4C" / "FileList.csv").exists() and (ped / "PSAX" / "Videos").is_dir()
    assert len(read_pediatric(ped).table) == 6
    with pytest.raises(ValueError, match="videos_per_patient"):
        export_phantom(tmp_path / "x", format="camus", patients=2, videos_per_patient=2)
    with pytest.raises(ValueError, match="PSAX"):
        export_phantom(tmp_path / "x", format="camus", patients=2, videos_per_patient=1, views=("PSAX",))
    assert not (tmp_path / "x").exists()


def test_stage_writes_dataset_and_metrics_keeping_other_files(tmp_path):
    out = tmp_path / "data"; out.mkdir()
    (out / "01_phantom.ipynb").write_text("{}")
    cfg = load_preset("smoke", {"data.patients": 4, "data.frames": 8})
    metrics = phantom_stage(cfg["data"], out)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == metrics and saved["videos"] == 8 and saved["patients"] == 4
    assert sum(s["patients"] for s in saved["splits"].values()) == 4 and saved["videos_per_second"] > 0
    assert (out / "01_phantom.ipynb").exists() and len(list((out / "Videos").glob("*.avi"))) == 8
    frames, fps = read_video(next((out / "Videos").glob("*.avi")))
    assert frames.shape == (8, 32, 32) and fps == pytest.approx(32.0)


def test_command_line(tmp_path):
    cmd = [sys.executable, str(REPO / "data_prep" / "phantom.py"), "--out", str(tmp_path / "d"), "--patients", "3",
           "--videos-per-patient", "1", "--frames", "8", "--size", "32", "--seed", "1", "--format", "echonet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(pd.read_csv(tmp_path / "d" / "FileList.csv")) == 3 and "phantom videos" in r.stderr   # the progress bar
    bad = subprocess.run(cmd[:-6] + ["--frames", "0", "--size", "32", "--seed", "1"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "frames" in bad.stderr and "Traceback" not in bad.stderr


# ---------------------------------------------------------------- bad parameters

@pytest.mark.parametrize("kwargs, word", [
    ({"ef": 0}, "ef"), ({"ef": 100}, "ef"), ({"ef": -3.0}, "ef"), ({"ef": 120}, "ef"), ({"frames": 0}, "frames"),
    ({"frames": -2}, "frames"), ({"size": 0}, "size"), ({"size": -64}, "size"), ({"size": 8}, "size"),
    ({"view": "PLAX2"}, "view"), ({"fps": 0}, "fps")])
def test_bad_render_parameters(kwargs, word):
    p = sample_patients(1)[0]
    with pytest.raises(ValueError, match=word):
        render_video(p, **kwargs)


def test_bad_dataset_parameters():
    for kwargs, word in [({"patients": 0}, "patients"), ({"views": ("A5C",)}, "views"), ({"videos_per_patient": 0}, "videos_per_patient"),
                         ({"ef_distribution": "gauss"}, "ef_distribution"), ({"val_fraction": 0.6, "test_fraction": 0.5}, "val_fraction"),
                         ({"frames": 0}, "frames"), ({"size": 0}, "size")]:
        with pytest.raises(ValueError, match=word):
            phantom_videos(**kwargs)
    with pytest.raises(ValueError, match="view"):
        sample_patients(3, view="apical")
    with pytest.raises(ValueError, match="format"):
        export_phantom("unused", format="dicom")
    assert isinstance(sample_patients(1)[0], PatientParams)
