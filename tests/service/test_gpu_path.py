"""The GPU path of the worker: mixed precision (``service/worker/precision.py``) and checkpoints
that move between devices (``service/worker/checkpoint.py``), with the real checkpoint code.

The unit tests run on any machine. Those marked ``cuda`` need a GPU and are skipped without one;
``bench/gpu/device_check.sh`` runs them on a GPU machine. This module imports neither Ray, MLflow
nor pydantic, so that the device check can run it where those are not installed.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hypermodels import CharLM, detach_state
from service.worker import checkpoint as ckpt
from service.worker.precision import MixedPrecision

from helpers import saved_as_if_on_gpu

ROOT = Path(__file__).resolve().parents[2]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
VOCAB, T, B = 11, 12, 4


# ---- mixed precision ------------------------------------------------------------------------------


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_autocast_is_active_with_the_configured_dtype(precision: str, dtype: torch.dtype) -> None:
    """bf16 on CPU here only to observe the context (the service refuses it for CPU jobs)."""
    amp = MixedPrecision(precision, "cpu")  # type: ignore[arg-type]
    layer, x = torch.nn.Linear(8, 8), torch.randn(3, 8)
    with amp.autocast():
        out, loss = layer(x), F.cross_entropy(layer(x), torch.tensor([0, 1, 2]))
    assert out.dtype == dtype
    assert loss.dtype == torch.float32  # autocast keeps the loss in float32
    assert layer(x).dtype == torch.float32  # nothing leaks out of the context
    assert not amp.scaling


def toy(seed: int = 0) -> tuple[torch.nn.Linear, torch.optim.Optimizer, torch.Tensor]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(6, 1)
    return model, torch.optim.Adam(model.parameters(), lr=0.1), torch.randn(5, 6)


def test_fp16_gradients_are_unscaled_before_clipping() -> None:
    ref_model, _, x = toy()
    ref_model(x).pow(2).sum().backward()
    ref_norm = torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 1e-3)

    model, opt, x = toy()
    amp = MixedPrecision("fp16", "cpu")
    assert amp.scaling and amp.scaler.get_scale() > 1
    norm = amp.backward(model(x).pow(2).sum(), opt, model.parameters(), 1e-3)
    # The returned norm and the clipped gradients are in true units, not multiplied by the scale.
    torch.testing.assert_close(norm, ref_norm)
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    before = [p.detach().clone() for p in model.parameters()]
    amp.step(opt)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_fp16_overflow_skips_the_step_and_lowers_the_scale() -> None:
    model, opt, x = toy()
    amp = MixedPrecision("fp16", "cpu")
    scale = amp.scaler.get_scale()
    before = [p.detach().clone() for p in model.parameters()]
    norm = amp.backward(model(x).sum() * float("inf"), opt, model.parameters(), 1.0)
    assert not torch.isfinite(norm)
    amp.step(opt)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert amp.scaler.get_scale() == scale * amp.scaler.get_backoff_factor()


# ---- checkpoints: the scaler's state, devices ----------------------------------------------------


def train_steps(model: CharLM, opt: torch.optim.Optimizer, amp: MixedPrecision, steps: int, state=None):
    """``steps`` truncated-BPTT steps as the char LM loop takes them; returns the carried state."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(0, VOCAB, (T + 1, B), generator=g).to(device)
        opt.zero_grad(set_to_none=True)
        with amp.autocast():
            logits, state = model(ids[:-1], state)
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), ids[1:].reshape(-1))
        state = detach_state(state)
        amp.backward(loss, opt, model.parameters(), 1.0)
        amp.step(opt)
    return state


def char_lm(device: str | torch.device, fast: bool = False) -> tuple[CharLM, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = CharLM(VOCAB, cell="hyperlstm", hidden_size=16, hyper_size=8, embed_size=4, fast=fast).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def save(folder: Path, model, opt, amp: MixedPrecision, state, step: int) -> None:
    ckpt.save(
        folder,
        0,
        ckpt.Position(step=step, batch=step),
        state,
        model=model,
        optimizer=opt,
        meta={"world_size": 1},
        grad_scaler=amp.state_dict(),
    )


def assert_moved(model, opt, reference, device: torch.device) -> None:
    """Model and optimizer state on ``device``, equal to ``reference``'s (model, optimizer)."""
    ref_model, ref_opt = reference
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        assert p.device == device, name
        torch.testing.assert_close(p.detach().cpu(), q.detach().cpu(), rtol=0, atol=0)
    moments = 0
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        mine, theirs = opt.state[p], ref_opt.state[q]
        assert mine.keys() == theirs.keys()
        for key in ("exp_avg", "exp_avg_sq"):
            assert mine[key].device == p.device, key  # the optimizer's state sits with its parameter
            torch.testing.assert_close(mine[key].cpu(), theirs[key].cpu(), rtol=0, atol=0)
            moments += 1
    assert moments == 2 * len(list(model.parameters()))


def test_scaler_state_is_saved_and_restored(tmp_path: Path) -> None:
    model, opt = char_lm("cpu")
    amp = MixedPrecision("fp16", "cpu")
    state = train_steps(model, opt, amp, 2)
    amp.backward(model(torch.zeros(T, B, dtype=torch.long))[0].sum() * float("inf"), opt, model.parameters(), 1.0)
    amp.step(opt)  # an overflow: the scale is no longer the initial one
    scale = amp.scaler.get_scale()
    assert scale == MixedPrecision("fp16", "cpu").scaler.get_scale() / 2
    save(tmp_path, model, opt, amp, state, 2)
    assert json.loads((tmp_path / ckpt.META_FILE).read_text())["grad_scaler"]["scale"] == scale

    fresh, fresh_opt = char_lm("cpu")
    restored = ckpt.load(tmp_path, 0, 1, fresh, fresh_opt, torch.device("cpu"))
    resumed = MixedPrecision("fp16", "cpu")
    assert resumed.scaler.get_scale() != scale
    resumed.load_state_dict(restored.grad_scaler)
    assert resumed.scaler.get_scale() == scale
    assert resumed.state_dict() == amp.state_dict()
    assert restored.position == ckpt.Position(step=2, batch=2)


def test_checkpoint_without_scaler_state_still_loads(tmp_path: Path) -> None:
    """fp32 runs and checkpoints written before mixed precision carry no scaler: a fresh one."""
    model, opt = char_lm("cpu")
    amp = MixedPrecision("fp32", "cpu")
    save(tmp_path, model, opt, amp, train_steps(model, opt, amp, 1), 1)
    assert "grad_scaler" not in json.loads((tmp_path / ckpt.META_FILE).read_text())
    restored = ckpt.load(tmp_path, 0, 1, *char_lm("cpu"), torch.device("cpu"))
    assert restored.grad_scaler == {}
    resumed = MixedPrecision("fp16", "cpu")
    resumed.load_state_dict(restored.grad_scaler)
    assert resumed.state_dict() == MixedPrecision("fp16", "cpu").state_dict()


def test_checkpoint_written_on_gpu_loads_onto_the_worker_device(tmp_path: Path) -> None:
    model, opt = char_lm("cpu")
    amp = MixedPrecision("fp32", "cpu")
    state = train_steps(model, opt, amp, 2)
    with saved_as_if_on_gpu():
        save(tmp_path, model, opt, amp, state, 2)
    if not torch.cuda.is_available():  # the files really say cuda:0
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / ckpt.MODEL_FILE, weights_only=True)

    fresh, fresh_opt = char_lm("cpu")
    cpu = torch.device("cpu")
    restored = ckpt.load(tmp_path, 0, 1, fresh, fresh_opt, cpu)
    assert_moved(fresh, fresh_opt, (model, opt), cpu)
    assert all(s.device == cpu for s in restored.recurrent_state)
    train_steps(fresh, fresh_opt, amp, 1, restored.recurrent_state)  # and training continues


def test_every_torch_load_in_the_service_maps_to_a_device() -> None:
    """A checkpoint or model written on a GPU must load anywhere: no ``torch.load`` without
    ``map_location`` in the service (the kind of fault the test above shows for one reader)."""
    calls = []
    for path in sorted((ROOT / "service").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", {k.arg for k in node.keywords}))
    assert len(calls) >= 3  # checkpoint.py (model, optimizer, rank) and translate.py
    assert [where for where, keywords in calls if "map_location" not in keywords] == []


# ---- on a GPU --------------------------------------------------------------------------------------


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("precision, fast", [("fp32", False), ("fp32", True), ("bf16", True), ("fp16", True)])
def test_gpu_checkpoint_resumes_on_cpu_and_back(tmp_path: Path, precision: str, fast: bool) -> None:
    """Trained on the GPU (``fast``: the fast path, Triton there), resumed on the CPU, and back."""
    gpu, cpu = torch.device("cuda", torch.cuda.current_device()), torch.device("cpu")
    model, opt = char_lm(gpu, fast)
    amp = MixedPrecision(precision, gpu)  # type: ignore[arg-type]
    state = train_steps(model, opt, amp, 3)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    save(tmp_path / "on-gpu", model, opt, amp, state, 3)

    # GPU -> CPU: everything lands on the CPU, equal; the scaler's state comes along.
    on_cpu, cpu_opt = char_lm(cpu)
    restored = ckpt.load(tmp_path / "on-gpu", 0, 1, on_cpu, cpu_opt, cpu)
    assert_moved(on_cpu, cpu_opt, (model, opt), cpu)
    assert all(s.device == cpu for s in restored.recurrent_state)
    assert restored.grad_scaler == (amp.state_dict() if precision == "fp16" else {})
    state = train_steps(on_cpu, cpu_opt, MixedPrecision("fp32", cpu), 1, restored.recurrent_state)
    save(tmp_path / "on-cpu", on_cpu, cpu_opt, MixedPrecision("fp32", cpu), state, 4)

    # CPU -> GPU: back onto the GPU, equal, and training continues there.
    back, back_opt = char_lm(gpu, fast)
    restored = ckpt.load(tmp_path / "on-cpu", 0, 1, back, back_opt, gpu)
    assert_moved(back, back_opt, (on_cpu, cpu_opt), gpu)
    assert all(s.device == gpu for s in restored.recurrent_state)
    train_steps(back, back_opt, amp, 1, restored.recurrent_state)
    assert all(torch.isfinite(p).all() for p in back.parameters())


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_gpu_autocast_dtype(precision: str, dtype: torch.dtype) -> None:
    amp = MixedPrecision(precision, "cuda")  # type: ignore[arg-type]
    layer = torch.nn.Linear(8, 8).cuda()
    with amp.autocast():
        out = layer(torch.randn(3, 8, device="cuda"))
    assert out.dtype == dtype
    assert amp.scaling == (precision == "fp16")
