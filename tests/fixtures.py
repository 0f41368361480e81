"""Synthetic fixture datasets for the loader tests: tiny moving-ellipse videos (never real data), written in each
published format by echoflow.data's writers, then edited to carry the quirks of the real releases."""
from __future__ import annotations

import gzip
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from echoflow.core import EchoVideo, tracings_from_mask
from echoflow.data import write_camus, write_echonet, write_latent_cache, write_lvh, write_pediatric


def ellipse_video(name: str, patient_id: str, ef: float = 55.0, *, frames: int = 16, height: int = 48, width: int = 48,
                  split: str = "TRAIN", view: str = "A4C", fps: float = 25.0, phase: float = 0.0, seed: int = 0) -> EchoVideo:
    """An ellipse 'LV' (label 1) in a myocardium ring (2) above an 'LA' (3); volume ~ scale^3 follows a cosine beat,
    so the method-of-disks EF of the masks is close to `ef`. `phase` (in beats) shifts where ED falls."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(float)
    t = np.arange(frames)
    beat = 0.5 - 0.5 * np.cos(2 * np.pi * (t / frames + phase))
    scale = 1 - (1 - (1 - ef / 100) ** (1 / 3)) * beat
    cy, cx, a0, b0 = height * 0.40, width / 2, height * 0.28, min(height, width) * 0.15
    s = scale[:, None, None]
    lv = ((xx - cx) / (b0 * s)) ** 2 + ((yy - cy) / (a0 * s)) ** 2 <= 1
    ring = ((xx - cx) / (b0 + 3)) ** 2 + ((yy - cy) / (a0 + 3)) ** 2 <= 1
    la = ((xx - cx) / (b0 * 0.9)) ** 2 + ((yy - cy - a0 - 5) / 5) ** 2 <= 1
    labels = np.where(lv, 1, np.where(ring[None], 2, np.where(la[None] & ~ring[None], 3, 0))).astype(np.uint8)
    pixels = np.clip(np.choose(labels, [70, 15, 210, 25]) + rng.normal(0, 6, labels.shape), 0, 255).astype(np.uint8)
    area = lv.sum((1, 2))
    return EchoVideo(name=name, frames=pixels, fps=fps, ef=ef, patient_id=patient_id, view=view, split=split,
                     edv=100.0, esv=100.0 * (1 - ef / 100), ed_frame=int(area.argmax()), es_frame=int(area.argmin()),
                     lv_masks=lv, labels=labels, extra={"pixel_mm": 2.0, "Sex": "F", "Age": 61, "ImageQuality": "Good"})


def toy_videos(n_patients: int = 4, views=("A4C",), *, frames: int = 16, height: int = 48, width: int = 48,
               splits=("TRAIN", "TRAIN", "VAL", "TEST"), **kw) -> list[EchoVideo]:
    "One video per patient and view; EF spread over 30-70; splits by patient."
    out = []
    for p in range(n_patients):
        for k, view in enumerate(views):
            i = len(out)
            out.append(ellipse_video(f"V{i:03d}", f"PAT{p:03d}", ef=30 + 40 * p / max(1, n_patients - 1) + 2 * k, frames=frames,
                                     height=height, width=width, split=splits[p % len(splits)], view=view, seed=i,
                                     phase=0.1 * i, **kw))
    return out


def make_dynamic(root: Path, videos: list[EchoVideo]) -> dict:
    """EchoNet-Dynamic with its quirks: video 0 keeps only 1 traced frame, video 1 has none, video 2's FileName carries
    '.avi' in FileList, video 3's tracings list ED before ES, splits in lower/mixed case; FileList has only the
    published columns (no PatientID/View)."""
    write_echonet(root, videos)
    fl = pd.read_csv(root/"FileList.csv")
    fl = fl[["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split"]]
    fl.loc[2, "FileName"] = fl.FileName[2] + ".avi"
    fl["Split"] = [s.lower() if i % 2 else s.capitalize() for i, s in enumerate(fl.Split)]
    fl.to_csv(root/"FileList.csv", index=False)
    vt = pd.read_csv(root/"VolumeTracings.csv")
    v0, v1, v3 = (videos[i].name + ".avi" for i in (0, 1, 3))
    keep0 = vt[vt.FileName == v0].Frame.iloc[-1]                     # the ED frame (listed last)
    vt = vt[~((vt.FileName == v0) & (vt.Frame != keep0)) & (vt.FileName != v1)]
    rows3 = vt[vt.FileName == v3]
    first = rows3.Frame.iloc[0]
    rows3 = pd.concat([rows3[rows3.Frame != first], rows3[rows3.Frame == first]])
    vt = pd.concat([vt[vt.FileName != v3], rows3])
    vt.to_csv(root/"VolumeTracings.csv", index=False)
    return {"one_trace": videos[0].name, "no_trace": videos[1].name, "with_ext": videos[2].name, "ed_first": videos[3].name,
            "one_trace_frame": int(keep0)}


def make_pediatric(root: Path, videos: list[EchoVideo]) -> dict:
    """EchoNet-Pediatric: names '<patient>-<study>-<6 digits>.avi', integer folds, no PatientID column, X,Y tracings;
    video 0 has no tracings."""
    named = [replace(v, name=f"{v.patient_id}-ST{i:02d}-{i:06d}") for i, v in enumerate(videos)]
    write_pediatric(root, named)
    for view_dir in (p for p in root.iterdir() if p.is_dir()):
        fl = pd.read_csv(view_dir/"FileList.csv").drop(columns=["PatientID"])
        fl.to_csv(view_dir/"FileList.csv", index=False)
        vt = pd.read_csv(view_dir/"VolumeTracings.csv")
        vt[vt.FileName != named[0].name + ".avi"].to_csv(view_dir/"VolumeTracings.csv", index=False)
    return {"names": [v.name for v in named], "no_trace": named[0].name}


def make_lvh(root: Path, videos: list[EchoVideo]) -> Path:
    "EchoNet-LVH from videos with non-square frames (leading index column and lower-case split come from the writer)."
    return write_lvh(root, videos)


def corrupt_file(path: Path, keep: float = 0.4):
    "Truncate a file to `keep` of its bytes."
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:int(len(data) * keep)])


def truncate_nifti(path: Path, keep: float = 0.6):
    "A .nii.gz whose gzip stream ends early (the header survives, the voxels do not)."
    raw = gzip.decompress(Path(path).read_bytes())
    Path(path).write_bytes(gzip.compress(raw[:int(len(raw) * keep)]))


def make_latent_cache(root: Path, videos: list[EchoVideo], *, channels: int = 4, side: int = 6, lengths=None, seed: int = 0):
    "A latent cache with random latents (T, C, h, w) per video, channel c offset by c and scaled by c + 1."
    g = torch.Generator().manual_seed(seed)
    lengths = lengths or [v.num_frames for v in videos]
    lat = {}
    for v, T in zip(videos, lengths):
        z = torch.randn(T, channels, side, side, generator=g)
        lat[v.name] = z * torch.arange(1, channels + 1)[None, :, None, None] + torch.arange(channels)[None, :, None, None]
    table = pd.DataFrame([{"FileName": v.name, "EF": v.ef, "ESV": v.esv, "EDV": v.edv, "FrameHeight": v.frames.shape[1],
                           "FrameWidth": v.frames.shape[2], "FPS": v.fps, "NumberOfFrames": T, "Split": v.split,
                           "PatientID": v.patient_id, "View": v.view} for v, T in zip(videos, lengths)])
    write_latent_cache(root, table, lat)
    return lat

