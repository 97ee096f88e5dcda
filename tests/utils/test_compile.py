"""``model.compile``: the task's forward (and backward) compiled, a clean eager fallback when it cannot be, and
errors that are not the compiler's raised as themselves."""

from __future__ import annotations

import warnings

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from conftest import TINY_PHOTOS, fit_briefly
from transferlab.runner import build
from transferlab.utils import compile as compile_module
from transferlab.utils.checks import check_values
from transferlab.utils.compile import CompiledOrEager, compile_forward
from transferlab.utils.errors import UserError


@pytest.fixture
def compile_with(monkeypatch):
    """``compile_with(backend)``: model.compile calls the real torch.compile with `backend` (fast on a CPU)."""
    real_compile = torch.compile

    def use(backend) -> None:
        monkeypatch.setattr(compile_module.torch, "compile", lambda fn, mode=None: real_compile(fn, backend=backend))

    yield use
    torch._dynamo.reset()


def test_a_model_that_does_not_compile_warns_once_and_runs_eagerly(compile_with) -> None:
    def exploding_backend(graph_module, example_inputs):
        raise RuntimeError("backend exploded\nlong compiler traceback")

    compile_with(exploding_backend)  # dynamo reports it as a compilation failure (BackendCompilerFailed)
    net = nn.Linear(3, 2)
    expected = net(torch.ones(1, 3))
    compile_forward(net, "reduce-overhead", "Linear")
    with pytest.warns(
        UserWarning,
        match=r"model.compile=reduce-overhead: Linear could not be compiled \(RuntimeError: "
        r"backend exploded\); running it eagerly",
    ) as caught:
        out = net(torch.ones(1, 3))
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert torch.equal(out, expected) and net.forward.compiled is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: eager from now on
        assert torch.equal(net(torch.ones(1, 3)), expected)


def test_a_runtime_error_of_the_compiled_model_is_raised_as_itself_without_an_eager_retry(monkeypatch) -> None:
    """A CUDA-graphs overwrite, an OOM or a model bug is no compilation failure: no warning, no hiding it."""
    eager_calls = []

    def compiled_that_fails(fn, mode=None):
        def run(*args, **kwargs):
            raise RuntimeError("accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run")

        return run

    monkeypatch.setattr(compile_module.torch, "compile", compiled_that_fails)
    net = nn.Linear(3, 2)
    net.register_forward_pre_hook(lambda *_: eager_calls.append(1))  # hooks run around any forward
    compile_forward(net, "reduce-overhead", "Linear")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match="overwritten by a subsequent run"):
            net.forward(torch.ones(1, 3))
    assert net.forward.compiled is not None and eager_calls == []


def test_a_shape_bug_met_while_tracing_is_raised_as_the_models_own_error(compile_with) -> None:
    """Dynamo meets the user's shape bug first (TorchRuntimeError); the eager call's error is the one raised."""
    compile_with("eager")
    net = nn.Linear(3, 2)
    compile_forward(net, "default", "Linear")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "could not be compiled": the model is wrong, not the compiler
        with pytest.raises(RuntimeError, match="cannot be multiplied") as raised:
            net(torch.ones(1, 4))
    assert type(raised.value) is RuntimeError and raised.value.__cause__ is None
    assert net.forward.compiled is not None
    assert net(torch.ones(1, 3)).shape == (1, 2)  # the compiled forward still serves correct calls


@pytest.mark.parametrize(
    ("mode", "accumulate", "refused"),
    [("reduce-overhead", 2, True), ("max-autotune", 4, True), ("default", 2, False), ("reduce-overhead", 1, False)],
)
def test_gradient_accumulation_under_cuda_graphs_is_refused_before_training(
    make_cfg, mode: str, accumulate: int, refused: bool
) -> None:
    cfg = make_cfg(f"model.compile={mode}", f"trainer.accumulate_grad_batches={accumulate}")
    if not refused:
        check_values(cfg)
        return
    message = rf"model.compile={mode} \(CUDA graphs\) cannot accumulate gradients.*model.compile=default or trainer"
    with pytest.raises(UserError, match=message):
        check_values(cfg)
    datamodule = build(cfg.data, "data")  # a task fitted through the Python API, past the config check
    task = build(cfg.model, "model", **datamodule.task_args())
    trainer = pl.Trainer(
        accelerator="cpu",
        accumulate_grad_batches=accumulate,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=cfg.paths.output_dir,
    )
    with pytest.raises(UserError, match=message):
        trainer.fit(task, datamodule=datamodule)


def test_compile_forward_is_in_place_and_idempotent() -> None:
    net = nn.Linear(3, 2)
    keys = list(net.state_dict())
    compile_forward(net, "default", "Linear")
    wrapper = net.forward
    compile_forward(net, "default", "Linear")
    assert net.forward is wrapper and isinstance(wrapper, CompiledOrEager) and list(net.state_dict()) == keys


@pytest.mark.slow
def test_compiled_task_trains_like_the_eager_one(make_cfg) -> None:
    """model.compile=default compiles normalisation + backbone + head; the steps give the eager losses."""
    losses = {}
    for mode in ("null", "default"):
        cfg = make_cfg(
            f"model.compile={mode}", "logger=none", "data/augment=none", "model.head_dropout=0", out=f"run-{mode}"
        )
        torch.manual_seed(0)
        datamodule = build(cfg.data, "data")
        task = build(cfg.model, "model", **datamodule.task_args())
        fit_briefly(task, datamodule, steps=2)
        losses[mode] = task.trainer.callback_metrics["train/loss"]
        if mode == "default":
            assert isinstance(task.forward, CompiledOrEager) and task.forward.compiled is not None
            assert task.forward.first_call_s is not None
    assert torch.allclose(losses["null"], losses["default"], rtol=1e-3)


GPU_MODELS = {  # tiny image-to-image runs whose validation chains compiled calls without gradients
    "johnson": ["model=style_transfer", "model.style_size=64", "model.net.channels=4"],
    "adain": ["model=adain", "model.style_size=64", "model.net.min_channels=8", "model.styles=[brick]"],
    "restoration": ["model=denoise", "data/degrade=gaussian_noise", "model.net.depth=4"],
}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU box with -m gpu)")
@pytest.mark.parametrize("model", list(GPU_MODELS))
def test_cuda_graph_steps_train_and_validate_with_a_grid(make_cfg, model: str) -> None:
    """model.compile=reduce-overhead in bf16: training, validation (net → loss network, no grad) and the grid."""
    photos = [o for o in TINY_PHOTOS if not o.startswith("trainer.")]
    cfg = make_cfg(
        *photos,
        *GPU_MODELS[model],
        "trainer=gpu",
        "logger=none",
        "callbacks=none",
        "model.compile=reduce-overhead",
        "data.train_patches=16",
        "data.val_patches=4",
        "trainer.max_epochs=2",
        "trainer.limit_val_batches=2",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        tiny=False,
    )
    datamodule = build(cfg.data, "data")
    task = build(cfg.model, "model", **datamodule.task_args())
    shown: list[torch.Tensor] = []

    class KeepGrid(pl.Callback):
        def on_validation_epoch_end(self, trainer, module) -> None:
            if module._grid is not None:
                shown.append(torch.cat([c.float().cpu() for c in module._grid[1]]))  # reading it must not raise

    trainer = fit_briefly(
        task, datamodule, epochs=2, steps=4, accelerator="gpu", precision="bf16-mixed", callbacks=[KeepGrid()]
    )
    modules = task.compiled_modules()
    assert all(m.forward.compiled is not None for m in modules), "a module fell back to eager"
    assert shown and all(torch.isfinite(grid).all() for grid in shown)
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
