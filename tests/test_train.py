"""The shared training loop: convergence, exact resume, atomic checkpoints, two CPU processes, bad input."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

import echoflow.train as train
from echoflow.train import Aux, EMA, fit, load_state, save_state

ROOT = Path(__file__).resolve().parents[1]


class TinyNet(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, width: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, width), nn.Tanh(), nn.Linear(width, 1))

    def forward(self, x): return self.net(x)


def loader(n=48, batch_size=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, generator=g)
    y = torch.sin(2 * x)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=True)


def noisy_loss(model, batch, step):
    x, y = batch
    pred = model(x + 0.05 * torch.randn_like(x))  # uses the global RNG: resume must restore it
    return nn.functional.mse_loss(pred, y), {"abs": (pred - y).abs().mean()}, {"x": x, "pred": pred.detach()}


def critic_loss(critic, batch, step, outputs):
    return nn.functional.mse_loss(critic(outputs["x"]), outputs["pred"]), {"critic": 1.0}


def make(seed=0):
    torch.manual_seed(seed)
    return TinyNet(), TinyNet(4)


def run(out_dir=None, steps=20, loss_fn=noisy_loss, seed=0, **kw):
    model, critic = make(seed)
    kw.setdefault("aux", Aux(critic, critic_loss, lr=0.01, start=3))
    return fit(model, loss_fn, loader(), steps=steps, lr=0.01, out_dir=out_dir, progress=False, log_every=5, **kw)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_loss_decreases_on_toy_regression():
    torch.manual_seed(0)
    res = fit(TinyNet(16), noisy_loss, loader(), steps=300, lr=0.02, progress=False, log_every=20, ema_decay=0.9)
    steps, losses = res.curve("loss")
    assert steps[-1] == 300 and len(losses) == 15
    assert losses[-1] < 0.2 * losses[0], losses
    assert res.step == 300 and res.resumed_from is None


def test_resume_is_exact_after_a_crash(tmp_path):
    whole = run(steps=20)

    def crash_at_13(model, batch, step):
        if step == 13: raise KeyboardInterrupt("simulated crash")
        return noisy_loss(model, batch, step)

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, steps=20, loss_fn=crash_at_13, checkpoint_every=5)
    assert json.loads((tmp_path/"checkpoint"/"state.json").read_text())["step"] == 10
    again = run(tmp_path, steps=20, seed=123, checkpoint_every=5)  # different init: all state comes from the checkpoint
    assert again.resumed_from == 10
    assert same_weights(again.model, whole.model)
    assert same_weights(again.ema, whole.ema)
    assert same_weights(again.aux, whole.aux)
    assert [h["step"] for h in again.history] == [5, 10, 15, 20]
    assert again.history[-1]["loss"] == pytest.approx(whole.history[-1]["loss"], abs=0)


def test_resume_in_two_calls_continues_training(tmp_path):
    whole = run(steps=16, checkpoint_every=None)
    first = run(tmp_path, steps=8)
    assert first.step == 8
    second = run(tmp_path, steps=16)
    assert second.resumed_from == 8 and same_weights(second.model, whole.model)
    # the clock carries over a resume: logged seconds never go back, and the total includes the first part's
    clock = [h["seconds"] for h in second.history]
    assert clock == sorted(clock) and second.seconds >= first.history[-1]["seconds"]
    # asking for no more steps than the checkpoint has trains nothing and returns the saved weights
    third = run(tmp_path, steps=16)
    assert third.resumed_from == 16 and same_weights(third.model, whole.model)
    fresh = run(tmp_path, steps=4, resume=False)
    assert fresh.resumed_from is None and fresh.step == 4


def test_outputs_and_no_pickles(tmp_path):
    res = run(tmp_path, steps=6, checkpoint_every=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["aux", "checkpoint", "history.json", "loss.png", "model"]
    assert (tmp_path/"loss.png").read_bytes()[:4] == b"\x89PNG"
    files = [p for p in (tmp_path/"checkpoint").rglob("*") if p.is_file()]
    assert files and all(p.suffix in (".safetensors", ".json") for p in files)
    for p in files:
        if p.suffix == ".safetensors": assert not p.read_bytes().startswith(b"\x80")  # not a pickle
    loaded = TinyNet.from_pretrained(tmp_path/"model")
    x = torch.randn(5, 1)
    assert torch.equal(loaded(x), res.ema(x))
    assert not list(tmp_path.glob(".*"))  # no temporaries left


def test_interrupted_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    real_save_state, calls = train.save_state, {"n": 0}

    def flaky_save_state(state, path):
        if Path(path).name == "optimizer":
            calls["n"] += 1
            if calls["n"] == 2: raise OSError("disk full (simulated)")
        real_save_state(state, path)

    monkeypatch.setattr(train, "save_state", flaky_save_state)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, steps=20, checkpoint_every=5)
    monkeypatch.setattr(train, "save_state", real_save_state)
    state = json.loads((tmp_path/"checkpoint"/"state.json").read_text())
    assert state["step"] == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".checkpoint.tmp")]
    whole = run(steps=20)
    again = run(tmp_path, steps=20, checkpoint_every=5)
    assert again.resumed_from == 5 and same_weights(again.model, whole.model)


def test_checkpoint_left_aside_is_found(tmp_path):
    run(tmp_path, steps=4)
    (tmp_path/"checkpoint").rename(tmp_path/".checkpoint.old-1-abc")  # as if killed between the two renames
    assert train.find_checkpoint(tmp_path) == tmp_path/".checkpoint.old-1-abc"
    assert run(tmp_path, steps=6).resumed_from == 4


def test_aux_starts_late_and_is_frozen_during_main_step():
    model, critic = make()
    before = [p.clone() for p in critic.parameters()]
    seen = []

    def main_calls_critic(m, batch, step):
        x, y = batch
        pred = m(x)
        seen.append(all(not p.requires_grad for p in critic.parameters()))
        return nn.functional.mse_loss(pred, y) + critic(pred).mean() * 0.0, {}, {"x": x, "pred": pred.detach()}

    fit(model, main_calls_critic, loader(), steps=4, lr=0.01, aux=Aux(critic, critic_loss, lr=0.01, start=4), progress=False)
    assert all(seen) and all(torch.equal(a, b) for a, b in zip(before, critic.parameters()))
    assert all(p.requires_grad for p in critic.parameters())


def test_state_roundtrip(tmp_path):
    state = {"a": (1, 2.5, None), 3: [torch.arange(4), {"b": "x"}], "t": torch.tensor(2.0)}
    save_state(state, tmp_path/"s")
    back = load_state(tmp_path/"s")
    assert back["a"] == (1, 2.5, None) and back[3][1] == {"b": "x"}
    assert torch.equal(back[3][0], torch.arange(4)) and torch.equal(back["t"], torch.tensor(2.0))
    with pytest.raises(FileNotFoundError, match="missing"):
        load_state(tmp_path/"nothing")


def test_ema_warmup_and_bad_decay():
    net = nn.Linear(2, 2)
    assert EMA(net, 0.999).decay_at(0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="ema_decay"):
        EMA(net, 1.0)


def test_ema_restart():
    "The average starts again at ema_restart: the model trains the same, the average forgets the steps before."
    plain, restarted = run(ema_decay=0.99), run(ema_decay=0.99, ema_restart=18)
    assert same_weights(plain.model, restarted.model) and not same_weights(plain.ema, restarted.ema)
    gap = lambda r: sum((a - b).abs().sum() for a, b in zip(r.ema.parameters(), r.model.parameters()))
    assert gap(restarted) < 0.2 * gap(plain)   # two warm-up steps (decay 0.1, 0.18): nearly the live weights
    assert same_weights(run(ema_decay=0.99, ema_restart=0).ema, plain.ema)   # restarting at 0 is no restart


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "steps"), (dict(lr=0.0), "lr"), (dict(grad_clip=-1.0), "grad_clip"),
    (dict(checkpoint_every=0), "checkpoint_every"), (dict(schedule="linear"), "schedule"), (dict(log_every=0), "log_every"),
    (dict(ema_restart=-1), "ema_restart"),
])
def test_bad_parameters(kwargs, message):
    args = dict(steps=2, lr=0.01) | kwargs
    with pytest.raises(ValueError, match=message):
        fit(TinyNet(), noisy_loss, loader(), progress=False, **args)


def test_bad_batches_and_loss():
    with pytest.raises(ValueError, match="re-iterable"):
        fit(TinyNet(), noisy_loss, (b for b in loader()), steps=2, lr=0.01, progress=False)
    with pytest.raises(ValueError, match="empty"):
        fit(TinyNet(), noisy_loss, [], steps=2, lr=0.01, progress=False)
    with pytest.raises(ValueError, match="must return"):
        fit(TinyNet(), lambda m, b, s: m(b[0]).mean(), loader(), steps=2, lr=0.01, progress=False)
    with pytest.raises(FloatingPointError, match="non-finite"):
        fit(TinyNet(), lambda m, b, s: (m(b[0]).mean() * float("nan"), {}), loader(), steps=2, lr=0.01, progress=False)


def test_resume_with_another_model_fails_clearly(tmp_path):
    run(tmp_path, steps=2)
    with pytest.raises(ValueError, match="does not match the model"):
        fit(TinyNet(3), noisy_loss, loader(), steps=4, lr=0.01, out_dir=tmp_path, progress=False,
            aux=Aux(TinyNet(4), critic_loss, lr=0.01))


SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from torch import nn
    from accelerate import Accelerator
    from echoflow.train import Aux, fit
    acc = Accelerator(cpu=True)
    torch.manual_seed(acc.process_index)  # different inits on purpose: fit broadcasts rank 0's weights
    model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
    x = torch.randn(64, 1, generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.sin(2 * x)), batch_size=8, shuffle=True)
    critic = nn.Linear(1, 1)
    def loss_fn(m, batch, step):
        xb, yb = batch
        pred = m(xb)
        return nn.functional.mse_loss(pred, yb), {}, {"x": xb, "pred": pred.detach()}
    def critic_loss(c, batch, step, outputs):
        return nn.functional.mse_loss(c(outputs["x"]), outputs["pred"]), {}
    res = fit(model, loss_fn, data, steps=30, lr=0.02, out_dir=sys.argv[1], checkpoint_every=10, progress=False,
              accelerator=acc, aux=Aux(critic, critic_loss, lr=0.02, start=5))
    flat = torch.cat([p.detach().flatten() for p in list(res.model.parameters()) + list(res.aux.parameters())])
    json.dump({"world": acc.num_processes, "weights": flat.tolist(), "loss": res.history[-1]["loss"]},
              open(f"{sys.argv[1]}/rank{acc.process_index}.json", "w"))
""")


@pytest.mark.slow
def test_two_cpu_processes_with_torchrun(tmp_path):
    script = tmp_path/"ddp_fit.py"
    script.write_text(SCRIPT)
    out = tmp_path/"out"
    env = os.environ | {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(out)], env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out/f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    assert ranks[0]["weights"] == ranks[1]["weights"]  # gradients averaged: the replicas (model and aux) never diverge
    assert json.loads((out/"checkpoint"/"state.json").read_text())["num_processes"] == 2
    assert (out/"model").is_dir() and (out/"loss.png").exists()
