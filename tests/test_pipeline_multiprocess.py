"A training stage run unchanged on 2 CPU processes (torchrun, gloo): the notebook becomes a script every rank executes."
import json
import socket
import sys
from pathlib import Path

import pytest

from echoflow.pipeline import STAGES, main, stage_complete
from echoflow.phantom import export_phantom


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@pytest.mark.slow
def test_vae_stage_on_two_processes(tmp_path):
    data = export_phantom(tmp_path / "data", format="echonet", patients=6, videos_per_patient=1, frames=8, size=32, seed=1)
    run = tmp_path / "run"
    launcher = f"{sys.executable} -m torch.distributed.run --nproc_per_node 2 --master_port {_port()}"
    rc = main(["run", "--preset", "smoke", "--out", str(run), "--only", "vae", "--data-dir", str(data), "--quiet",
               "--launcher", launcher])
    log = run / "vae" / "12_vae.log"
    assert rc == 0, (run / ".vae.partial" / "12_vae.log").read_text()[-3000:] if (run / ".vae.partial").exists() else "no log"
    assert stage_complete(run, next(s for s in STAGES if s.name == "vae"))
    assert json.loads((run / "vae" / "checkpoint" / "state.json").read_text())["num_processes"] == 2
    assert json.loads((run / "vae" / "stage.json").read_text())["launcher"] == launcher
    assert (run / "vae" / "model" / "config.json").exists() and log.exists()
    assert sorted(p.name for p in run.iterdir()) == ["vae"], "no stray folders from the second rank"
