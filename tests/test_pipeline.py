"The papermill pipeline driver: stage selection, skip/force, failure messages, kill-and-resume, the CLI."
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from echoflow.pipeline import STAGES, StageFailed, main, run_pipeline, stage_complete

ROOT = Path(__file__).resolve().parents[1]


def _fake_notebook(path: Path, body: str):
    "A stand-in stage notebook: a parameters cell, then `body` (which writes the stage's outputs)."
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("preset = 'smoke'\noverrides = {}\nout_dir = None\nrun_dir = None\n"
                                       "data_dir = vae_dir = latents_dir = lifm_dir = reid_dir = lvfm_dir = synth_dir = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nbformat.write(nb, path)


def _writer(stage, extra=""):
    outs = [o for o in stage.outputs]
    return (f"from pathlib import Path\nimport time, json\nout = Path(out_dir)\n{extra}\n"
            f"for o in {outs!r}:\n    p = out / o\n    p.parent.mkdir(parents=True, exist_ok=True)\n"
            f"    p.write_text(json.dumps({{'stage': {stage.name!r}, 'psnr': 30.0}}) if o.endswith('.json') else 'x')\n")


@pytest.fixture
def fake_nbs(tmp_path):
    nbs = tmp_path / "nbs"; nbs.mkdir()
    for s in STAGES: _fake_notebook(nbs / s.notebook, _writer(s))
    return nbs


def test_runs_all_stages_then_skips_then_forces(fake_nbs, tmp_path):
    run = tmp_path / "run"
    recs = run_pipeline("smoke", run, nbs_dir=fake_nbs, progress=False, log=lambda *_: None)
    assert [r["status"] for r in recs] == ["complete"] * len(STAGES)
    assert all(stage_complete(run, s) for s in STAGES)
    rec = json.loads((run / "vae" / "stage.json").read_text())
    assert rec["wall_s"] > 0 and rec["peak_mb"] > 0 and rec["parameters"]["data_dir"] == str(run.resolve() / "data")
    assert (run / "vae" / "12_vae.ipynb").exists(), "the executed notebook is kept with the stage"
    recs = run_pipeline("smoke", run, nbs_dir=fake_nbs, progress=False, log=lambda *_: None)
    assert [r["status"] for r in recs] == ["skipped"] * len(STAGES)
    recs = run_pipeline("smoke", run, only="lifm", force=True, nbs_dir=fake_nbs, progress=False, log=lambda *_: None)
    assert [(r["stage"], r["status"]) for r in recs] == [("lifm", "complete")]


def test_failed_stage_names_notebook_and_cell_and_keeps_earlier_stages(fake_nbs, tmp_path):
    _fake_notebook(fake_nbs / "30_lifm.ipynb", "raise RuntimeError('diverged at step 3')")
    run = tmp_path / "run"
    with pytest.raises(StageFailed) as e:
        run_pipeline("smoke", run, nbs_dir=fake_nbs, progress=False, log=lambda *_: None)
    msg = str(e.value)
    assert "lifm" in msg and "30_lifm.ipynb" in msg and "cell 2" in msg and "raise RuntimeError" in msg and "diverged at step 3" in msg
    assert all(stage_complete(run, s) for s in STAGES[:3])
    assert not (run / "lifm").exists() and not stage_complete(run, STAGES[3])


def test_stage_without_its_outputs_is_not_complete(fake_nbs, tmp_path):
    _fake_notebook(fake_nbs / "01_phantom.ipynb", "print('forgot to write anything')")
    with pytest.raises(StageFailed, match="did not write"):
        run_pipeline("smoke", tmp_path / "run", only="data", nbs_dir=fake_nbs, progress=False, log=lambda *_: None)


def test_killed_run_resumes_without_recomputing_finished_stages(fake_nbs, tmp_path):
    # the lifm stage counts its attempts in its partial folder and hangs on the first one
    body = _writer(STAGES[3], extra=("n = out / 'attempts.txt'\nk = int(n.read_text()) + 1 if n.exists() else 1\n"
                                     "n.write_text(str(k))\nprint('lifm attempt', k, flush=True)\nif k == 1: time.sleep(120)"))
    _fake_notebook(fake_nbs / "30_lifm.ipynb", body)
    run = tmp_path / "run"
    code = (f"from echoflow.pipeline import run_pipeline; "
            f"run_pipeline('smoke', {str(run)!r}, nbs_dir={str(fake_nbs)!r}, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.time() + 120
    while not (run / ".lifm.partial" / "attempts.txt").exists():
        assert time.time() < deadline and proc.poll() is None, "pipeline did not reach the lifm stage"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL); proc.wait()
    done_before = {s.name: (run / s.name / "stage.json").stat().st_mtime for s in STAGES[:3]}
    assert not (run / "lifm").exists()
    recs = run_pipeline("smoke", run, nbs_dir=fake_nbs, progress=False, log=lambda *_: None)
    assert [r["status"] for r in recs[:3]] == ["skipped"] * 3
    assert all(r["status"] == "complete" for r in recs[3:])
    assert {s.name: (run / s.name / "stage.json").stat().st_mtime for s in STAGES[:3]} == done_before
    assert (run / "lifm" / "attempts.txt").read_text() == "2", "the partial folder is re-entered, not thrown away"


def test_unfinished_attempt_is_resumed_only_with_the_same_settings_and_inputs(fake_nbs, tmp_path):
    # the lifm stage counts its attempts in its partial folder and fails its first attempt unless given an override
    body = _writer(STAGES[3], extra=("n = out / 'attempts.txt'\nk = int(n.read_text()) + 1 if n.exists() else 1\n"
                                     "n.write_text(str(k))\nif k == 1 and not overrides: raise RuntimeError('first attempt')"))
    _fake_notebook(fake_nbs / "30_lifm.ipynb", body)
    run, said = tmp_path / "run", []
    go = lambda **kw: run_pipeline("smoke", run, nbs_dir=fake_nbs, progress=False, log=said.append, **kw)
    with pytest.raises(StageFailed, match="first attempt"): go()
    assert (run / ".lifm.partial" / "attempts.txt").read_text() == "1"
    go(only="latents", force=True)                                     # an input of lifm is made again
    with pytest.raises(StageFailed, match="first attempt"): go(only="lifm")
    assert (run / ".lifm.partial" / "attempts.txt").read_text() == "1", "an attempt on other inputs is not resumed"
    assert any(".lifm.partial" in m and "other inputs" in m for m in said), said
    said.clear()
    go(only="lifm", overrides={"lifm.steps": 7})                       # other settings: starts afresh, and now passes
    assert (run / "lifm" / "attempts.txt").read_text() == "1"
    assert any("other settings and parameters" in m for m in said), said
    assert not (run / "lifm" / ".attempt.json").exists() and not (run / ".lifm.partial").exists()


def test_cli_rejects_bad_input_before_running(tmp_path, capsys):
    assert main(["run", "--preset", "smoke", "--out", str(tmp_path / "r"), "-p", "vae.steps=many"]) == 1
    assert "vae.steps" in capsys.readouterr().err
    assert main(["run", "--preset", "smoke", "--out", str(tmp_path / "r"), "--data-dir", str(tmp_path)]) == 1
    assert "FileList.csv" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit): main(["run", "--from", "nonsense"])
