"The whole pipeline at the smoke preset, as `make demo` runs it: killed mid-stage, restarted, finished; every metric and artifact checked."
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from echoflow.pipeline import STAGES, stage_complete
from echoflow.report import METRIC_SOURCES

ECHOFLOW = str(Path(sys.executable).parent / "echoflow")
CALIBRATED = [k for k in METRIC_SOURCES if k.endswith("_calibrated")]   # absent where the smoke model was left uncalibrated
REQUIRED = [k for k in METRIC_SOURCES if k not in CALIBRATED] + ["time.total_s", "memory.peak_mb"]


def _run(run_dir, *extra):
    return subprocess.run([ECHOFLOW, "run", "--preset", "smoke", "--out", str(run_dir), "--quiet", *extra],
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_smoke_pipeline_killed_resumed_and_complete(tmp_path):
    run = tmp_path / "smoke"
    t0 = time.time()
    proc = subprocess.Popen([ECHOFLOW, "run", "--preset", "smoke", "--out", str(run), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while not (run / ".lifm.partial").exists():                       # kill it inside the 4th stage
        assert proc.poll() is None, "the pipeline stopped before the lifm stage"
        assert time.time() - t0 < 600, "the first three stages took over 10 minutes"
        time.sleep(0.5)
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGKILL); proc.wait()
    finished = {s.name: (run / s.name / "stage.json").stat().st_mtime for s in STAGES[:3]}
    assert all(stage_complete(run, s) for s in STAGES[:3]) and not (run / "lifm").exists()

    result = _run(run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("complete, skipped") == 3
    assert {s: (run / s / "stage.json").stat().st_mtime for s in finished} == finished, "finished stages were recomputed"
    assert all(stage_complete(run, s) for s in STAGES)
    elapsed = time.time() - t0

    metrics = json.loads((run / "report" / "metrics.json").read_text())
    missing = [k for k in REQUIRED if not isinstance(metrics.get(k), (int, float)) or not math.isfinite(metrics[k])]
    assert not missing, f"metrics missing or not finite: {missing}"
    assert 0 <= metrics["realism.c2st_accuracy"] <= 1 and metrics["vae.psnr"] > 5 and metrics["lvfm.onestep_speedup"] > 1
    for kind in ("multistep", "onestep"):                               # the EF calibration ran: a map, or a refusal
        assert metrics[f"ef.ef_map_fitted_{kind}"] in (0, 1)
        if metrics[f"ef.ef_map_fitted_{kind}"]: assert metrics[f"ef.ef_map_b_{kind}"] > 0 and math.isfinite(metrics[f"ef.ef_mae_{kind}_calibrated"])
    assert (run / "ef" / "calibrated" / "meanflow_model" / "config.json").exists()
    assert metrics["lvfm.meanflow_probe_train_s"] > 0 and metrics["lvfm.meanflow_probe_gap"] >= 0   # the smoke preset's probe-term phase ran
    for stage in STAGES:
        assert (run / stage.name / stage.notebook).exists(), f"executed notebook of {stage.name} missing"
    report = (run / "report" / "report.md").read_text()
    assert "vae.psnr" in report and "## Stages" in report
    assert list((run / "synth" / "Videos").glob("*.avi")), "the synthetic dataset has no videos"
    print(f"smoke pipeline with one kill and resume: {elapsed:.0f} s; total stage time {metrics['time.total_s']:.0f} s")
