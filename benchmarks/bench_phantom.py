"""EchoPhantom rendering speed: videos per second for 32-frame 64x64 and 64-frame 112x112 videos (A4C, batched torch).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_phantom.py [--threads 2] [--videos 32] [--batch 8]

Two cases per size: every video from a new patient (the patient's atlas is built each time) and 4 videos per patient
(the atlas is built once, as in a dataset with several videos per patient). Prints wall-clock videos/s and the CPU
seconds per video; other processes on the machine slow the wall clock (the load average is printed). The target of
the phantom issue is >= 10 videos/s at 64x64x32 on 2 cores."""
import argparse
import os
import time

import torch

from echoflow import phantom


def bench(size: int, frames: int, n_videos: int, per_patient: int, batch: int, seed: int) -> tuple[float, float]:
    "(videos per second wall-clock, CPU seconds per video) for `n_videos` fresh renders."
    phantom._ATLAS_CACHE.clear()
    patients = phantom.sample_patients(-(-n_videos // per_patient), seed=seed)
    jobs = [p for p in patients for _ in range(per_patient)][:n_videos]
    phantom.render_videos(jobs[:2], frames=4, size=size, seeds=[0, 1])          # warm-up (allocations, code paths)
    phantom._ATLAS_CACHE.clear()
    wall, cpu = time.perf_counter(), time.process_time()
    phantom.render_videos(jobs, frames=frames, size=size, seeds=list(range(n_videos)), batch_size=batch)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return n_videos / wall, cpu / n_videos


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--videos", type=int, default=32, help="videos rendered per case (default 32)")
    ap.add_argument("--batch", type=int, default=8, help="videos rendered together (default 8)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'video':>16} {'patients':>22} {'videos/s':>9} {'CPU s/video':>12}")
    for size, frames in ((64, 32), (112, 64)):
        for per_patient, label in ((1, "new patient per video"), (4, "4 videos per patient")):
            n = args.videos if size == 64 else max(8, args.videos // 2)
            vps, cpu = bench(size, frames, n, per_patient, args.batch, args.seed)
            print(f"{f'{frames}x{size}x{size}':>16} {label:>22} {vps:9.1f} {cpu:12.3f}")


if __name__ == "__main__":
    main()
