"""Speed of the dataset readers and torch datasets (echoflow.data) on synthetic files; prints figures.

    OMP_NUM_THREADS=1 python benchmarks/data_readers.py

1. read_echonet on a full-size EchoNet-Dynamic index (10,030 FileList rows, 421,260 tracing rows; empty video files,
   since indexing never decodes them);
2. decoding + clip sampling: EchoClips (32 frames, period 2) and EchoFrames on 112x112 MJPG videos of 128 frames."""
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from echoflow.core import EchoVideo, tracings_from_mask  # noqa: E402
from echoflow.data import EchoClips, EchoFrames, read_echonet, write_echonet  # noqa: E402


def big_index(root: Path, n: int = 10030):
    (root/"Videos").mkdir(parents=True)
    names = [f"0X{i:014X}" for i in range(n)]
    for nm in names: (root/"Videos"/f"{nm}.avi").touch()
    rng = np.random.default_rng(0)
    pd.DataFrame({"FileName": names, "EF": rng.uniform(10, 90, n), "ESV": 40.0, "EDV": 100.0, "FrameHeight": 112,
                  "FrameWidth": 112, "FPS": 50, "NumberOfFrames": 150,
                  "Split": rng.choice(["TRAIN", "VAL", "TEST"], n)}).to_csv(root/"FileList.csv", index=False)
    yy, xx = np.mgrid[:112, :112]
    ed = tracings_from_mask(((xx - 56) / 20) ** 2 + ((yy - 50) / 40) ** 2 <= 1)
    es = tracings_from_mask(((xx - 56) / 15) ** 2 + ((yy - 50) / 33) ** 2 <= 1)
    per_video = np.r_[np.c_[es, np.full(21, 30)], np.c_[ed, np.full(21, 10)]]
    vt = pd.DataFrame(np.tile(per_video, (n, 1)), columns=["X1", "Y1", "X2", "Y2", "Frame"])
    vt.insert(0, "FileName", np.repeat([nm + ".avi" for nm in names], 42))
    vt["Frame"] = vt.Frame.astype(int)
    vt.to_csv(root/"VolumeTracings.csv", index=False)
    return len(vt)


def videos(n: int = 24, frames: int = 128, size: int = 112):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for i in range(n):
        s = 1 - 0.15 * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(frames) / 40))[:, None, None]
        lv = ((xx - 56) / (18 * s)) ** 2 + ((yy - 50) / (38 * s)) ** 2 <= 1
        px = np.clip(np.where(lv, 20, 120) + rng.normal(0, 20, lv.shape), 0, 255).astype(np.uint8)
        out.append(EchoVideo(f"B{i:03d}", px, 50.0, 55.0, f"P{i}", split="TRAIN", ed_frame=0, es_frame=20, lv_masks=lv))
    return out


def main():
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        rows = big_index(d/"big")
        t = time.perf_counter(); src = read_echonet(d/"big"); dt = time.perf_counter() - t
        print(f"read_echonet: {len(src)} videos, {rows} tracing rows indexed in {dt:.2f} s")
        vids = videos()
        t = time.perf_counter(); write_echonet(d/"small", vids); dt = time.perf_counter() - t
        print(f"write_echonet: {len(vids)} videos of 128x112x112 in {dt:.2f} s ({len(vids) / dt:.1f} videos/s, tracings from masks included)")
        clips = EchoClips.reference(d/"small", cache=0)
        t = time.perf_counter()
        for i in range(len(clips)): clips[i]
        dt = time.perf_counter() - t
        print(f"EchoClips.reference (decode + 32x2 clip, no cache): {len(clips) / dt:.1f} clips/s")
        frames = EchoFrames(d/"small", frames_per_video=8, cache=True)
        t = time.perf_counter()
        for i in range(len(frames)): frames[i]
        dt = time.perf_counter() - t
        print(f"EchoFrames (cache=True, first pass decodes): {len(frames) / dt:.0f} frames/s")
        t = time.perf_counter()
        for i in range(len(frames)): frames[i]
        dt = time.perf_counter() - t
        print(f"EchoFrames (cached): {len(frames) / dt:.0f} frames/s")


if __name__ == "__main__":
    main()
