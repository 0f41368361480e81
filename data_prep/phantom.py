"""Render the built-in echo phantom and write it in a published layout (EchoNet-Dynamic, CAMUS or EchoNet-Pediatric).

    python data_prep/phantom.py --out DIR --patients 200 --videos-per-patient 3 --frames 64 --size 112 --seed 0 --format echonet

Patients are split TRAIN/VAL/TEST by patient; the folder appears only when complete. The logic lives in
echoflow.phantom (export_phantom); this is its command line."""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from echoflow.phantom import EF_DISTRIBUTIONS, EXPORT_FORMATS, PHANTOM_VIEWS, export_phantom  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Render the echoflow phantom to a dataset folder.")
    ap.add_argument("--out", required=True, type=Path, help="output folder (replaced when complete)")
    ap.add_argument("--patients", type=int, default=12, help="number of phantom patients (default 12)")
    ap.add_argument("--videos-per-patient", type=int, default=None,
                    help="videos per patient and view (default 2; 1 for --format camus)")
    ap.add_argument("--frames", type=int, default=32, help="frames per video (default 32)")
    ap.add_argument("--size", type=int, default=112, help="frame size in pixels (default 112)")
    ap.add_argument("--fps", type=float, default=32.0, help="frame rate (default 32)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the patients, videos and split (default 0)")
    ap.add_argument("--format", choices=EXPORT_FORMATS, default="echonet", help="on-disk layout (default echonet)")
    ap.add_argument("--views", default="A4C", help=f"comma-separated views among {','.join(PHANTOM_VIEWS)} (default A4C)")
    ap.add_argument("--ef-distribution", choices=EF_DISTRIBUTIONS, default="echonet", help="EF prior (default echonet)")
    ap.add_argument("--val-fraction", type=float, default=0.15, help="share of patients in VAL (default 0.15)")
    ap.add_argument("--test-fraction", type=float, default=0.15, help="share of patients in TEST (default 0.15)")
    ap.add_argument("--batch-size", type=int, default=8, help="videos rendered together (default 8)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    vpp = args.videos_per_patient if args.videos_per_patient is not None else (1 if args.format == "camus" else 2)
    views = tuple(v.strip() for v in args.views.split(",") if v.strip())
    t0 = time.time()
    try:
        root = export_phantom(args.out, format=args.format, patients=args.patients, videos_per_patient=vpp, frames=args.frames,
                              size=args.size, fps=args.fps, seed=args.seed, ef_distribution=args.ef_distribution, views=views,
                              val_fraction=args.val_fraction, test_fraction=args.test_fraction, batch_size=args.batch_size,
                              progress=True)
    except ValueError as e:
        print(f"phantom.py: error: {e}", file=sys.stderr)
        return 2
    n = args.patients * vpp * len(views)
    print(f"wrote {n} {args.format} videos of {args.patients} patients to {root} in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
