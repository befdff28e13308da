"""The compiled engine (``core/ddpm/compile.py``): a compiled U-Net or DiT gives the eager network's output, the
warm-up compiles every batch size a worker meets before the first request, and ``Warm`` compiles an engine model as
its config or the ``COMPILE`` setting says, recording it in the job's versions.

The inductor tests compile for real (slow on a 2-core CPU: tens of seconds each, minutes when the machine is
busy); the others trace with dynamo's ``eager`` backend, which guards and recompiles exactly as inductor does but
generates no kernels."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

from core.ddpm.compile import WARM_UP_BATCHES, compile_network, compiled, warm_up, warm_up_inputs
from core.ddpm.dit import DiT, DiTConfig
from core.ddpm.pipeline import DDPMEngineModel, generate_batch
from core.ddpm.unet import UNet, UNetConfig
from core.pipelines.fastpath import FastPath
from core.registry import ModelRegistry
from core.settings import ServiceSettings
from core.warm import Warm

TINY_UNET = dict(
    sample_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), num_heads=2
)
TINY_UNET.update(norm_groups=4, num_classes=3, dropout=0.0)
TINY_DIT = dict(sample_size=8, patch_size=2, hidden_size=16, depth=2, num_heads=2, num_classes=3)


def tiny(kind: str, device: str = "cpu") -> torch.nn.Module:
    """A tiny network with random weights everywhere (the zero-initialised output layers too, so it outputs more
    than zeros)."""
    torch.manual_seed(0)
    net = UNet(UNetConfig(**TINY_UNET)) if kind == "unet" else DiT(DiTConfig(**TINY_DIT))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net.to(device).eval().requires_grad_(False)


def batch(net: torch.nn.Module, n: int, seed: int = 0):
    """Random (x, t, y) for ``n`` images, as the samplers pass them."""
    g = torch.Generator().manual_seed(seed)
    x, _, y = warm_up_inputs(net, n)
    device = x.device
    x = torch.randn(x.shape, generator=g).to(device)
    t = (torch.rand(n, generator=g) * 999).to(device)
    y = torch.randint(0, 4, (n,), generator=g).to(device)  # 3: the null class
    return x, t, y


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def unique_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


# -- compiled equals eager (inductor) ---------------------------------------------------------------------------


def check_equal_to_eager(kind: str, device: str, cuda_graphs: bool = False) -> None:
    eager = tiny(kind, device)
    net = copy.deepcopy(eager)
    label = compile_network(net, "inductor", cuda_graphs=cuda_graphs)
    assert label == ("inductor+cuda_graphs" if cuda_graphs else "inductor") and compiled(net) == label
    assert compiled(eager) is None and isinstance(net, type(eager))  # in place: the module stays itself
    before = unique_graphs()
    assert warm_up(net) > 0
    graphs = unique_graphs()
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        for n in (1, 2, 3, 8, 17):
            inputs = batch(eager, n, seed=n)
            want = eager(*inputs)
            got = net(*inputs).clone()  # a CUDA graph's output is overwritten by its next replay
            assert want.abs().max() > 0.1  # random weights: a real output, not the zero start
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (n, (got - want).abs().max().item())
    assert unique_graphs() == graphs <= before + len(WARM_UP_BATCHES)  # batch 1, dynamic graphs for the others


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_compiled_network_equals_eager_on_every_batch_without_recompiling(kind):
    check_equal_to_eager(kind, "cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["unet", "dit"])
@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["inductor", "cuda_graphs"])
def test_compiled_network_equals_eager_on_cuda(kind, cuda_graphs):
    check_equal_to_eager(kind, "cuda", cuda_graphs)


# -- the warm-up covers every batch size (dynamo's eager backend: same guards, no kernels) ------------------------


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_warm_up_compiles_batch_one_and_dynamic_batches_for_all_others(kind):
    net = tiny(kind)
    counter = CompileCounter()
    compile_network(net, counter)
    assert counter.frame_count == 0  # compile_network only wraps: the warm-up compiles
    warm_up(net)
    graphs = counter.frame_count
    assert 2 <= graphs <= len(WARM_UP_BATCHES)  # batch 1 static, the others dynamic
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        for n in (1, 3, 4, 7, 15, 16, 17, 40, 128, 2):
            assert net(*batch(net, n)).shape == (n, 1, 8, 8)
    assert counter.frame_count == graphs


def test_an_eager_network_needs_no_warm_up():
    assert warm_up(tiny("unet")) == 0.0


# -- Warm: the model's default, the setting, the versions, no compile in a request ------------------------------


def save_model(root, name: str, compile_default: bool | str | None) -> None:
    labels = ["a", "b", "c"]
    model = DDPMEngineModel(tiny("unet"), {"kind": "flow"}, labels=labels, default_num_inference_steps=2)
    model.save_pretrained(root / name)
    if compile_default is not None:
        config = json.loads((root / name / "config.json").read_text())
        (root / name / "config.json").write_text(json.dumps({**config, "compile": compile_default}))


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine-models")
    for name, default in (("fast", True), ("plain", None), ("slow", False)):
        save_model(root, name, default)
    return ModelRegistry([root])


def warm(registry, tmp_path, compile: bool | None) -> Warm:
    fast = FastPath.for_device("cpu", compile=compile, compile_backend="eager", cache_dir=tmp_path / "inductor")
    return Warm(registry, device="cpu", cache_dir=tmp_path, fast=fast)


@pytest.mark.parametrize(
    "setting, want",
    [
        (None, {"fast": "eager", "plain": "off", "slow": "off"}),  # COMPILE unset: each model's own default
        (True, {"fast": "eager", "plain": "eager", "slow": "eager"}),  # COMPILE=1
        (False, {"fast": "off", "plain": "off", "slow": "off"}),  # COMPILE=0
    ],
    ids=["unset", "on", "off"],
)
def test_the_setting_overrides_the_models_default(registry, tmp_path, setting, want):
    w = warm(registry, tmp_path, setting)
    got = {}
    for name in want:
        engine, _ = w.load_engine(registry.get(name))
        got[name] = w.engine_versions(engine)["engine_compiled"]
        assert w.engine_versions(engine)["torch"] == torch.__version__  # the worker's versions, and this
    assert got == want


def test_a_warm_without_a_fast_path_compiles_no_engine(registry, tmp_path):
    w = Warm(registry, device="cpu", cache_dir=tmp_path)  # a library's default: only a worker's settings compile
    engine, _ = w.load_engine(registry.get("fast"))
    assert compiled(engine.unet) is None


def test_the_models_default_is_read_from_its_config(registry, tmp_path, caplog):
    assert [registry.get(n).compile for n in ("fast", "plain", "slow")] == [True, False, False]
    save_model(tmp_path, "odd", "yes")
    assert ModelRegistry([tmp_path]).get("odd").compile is False  # not a boolean: eager, and the log says why
    assert "compile must be true or false (got 'yes')" in caplog.text


def test_the_setting_is_unset_by_default(monkeypatch):
    monkeypatch.delenv("COMPILE", raising=False)
    assert ServiceSettings().compile is None
    monkeypatch.setenv("COMPILE", "1")
    assert ServiceSettings().compile is True
    monkeypatch.setenv("COMPILE", "0")
    assert ServiceSettings().compile is False


def test_the_warm_up_at_load_leaves_no_compile_to_a_request(registry, tmp_path):
    """What the worker does at start (``warm_up``), then requests as the executors make them: one image unguided
    (batch 1), guided (batch 2), several images guided, and jobs batched together; none compiles anything."""
    w = warm(registry, tmp_path, True)
    before = unique_graphs()
    w.warm_up(["fast"])
    engine, load_ms = w.load_engine(registry.get("fast"))
    assert load_ms == 0 and compiled(engine.unet) == "eager"
    graphs = unique_graphs()
    assert 2 <= graphs - before <= len(WARM_UP_BATCHES)
    eager = DDPMEngineModel.from_pretrained(registry.get("fast").path)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for images, guidance in ((1, 1.0), (1, 3.0), (3, 2.0), (8, 2.0)):
            kw = dict(labels=["b"], num_images=images, guidance_scale=guidance, num_inference_steps=2, seed=7)
            assert torch.allclose(engine.generate(**kw), eager.generate(**kw), atol=1e-5)
        draws = [(["a"], 2, 1), (["c"], 3, 5)]
        got = generate_batch(engine, draws, 2, "euler", 2.0, 8)
        assert [x.shape[0] for x in got] == [2, 3]
    assert unique_graphs() == graphs
