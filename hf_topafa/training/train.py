"""Train an SAE of the family on a language model's activations, with Accelerate.

One process on a CPU or GPU by default; bf16 autocast on GPU. The same code runs as DDP, each
process reading its own part of the data and ``--batch-size`` being the global batch:

    accelerate launch --multi_gpu --num_processes 4 -m hf_topafa.train --max-tokens 50000000 ...
    torchrun --nproc_per_node 2 -m hf_topafa.train ...        # CPU processes (gloo)

The step follows the paper's published code (SewoongLee/top-afa-sae, training/training.py):
Adam (lr 3e-4 constant, betas 0.9/0.99, eps 1e-8); the gradient norm clipped at 1e5; the
decoder-row gradient's radial part removed and the rows renormalized to unit norm; then the Adam
step. Features that have not fired for ``dead_tokens_threshold`` tokens (default five batches, the
paper's ``n_batches_to_dead``) count as dead and feed the aux-k loss. By default inputs are
standardized per token, the encoder has no trained bias, ``W_enc`` starts kaiming-uniform and
``b_dec`` at zero, and the loss is in the paper's units (``SAEOutput``); each of these is a flag.
A learning-rate warmup and decay are opt-in (``--warmup-fraction``, ``--decay-fraction``).

A run folder ends as a ``save_pretrained`` folder (``config.json``, ``model.safetensors``) plus
``training_config.json`` (the resolved configuration, one object per section of ``TrainConfig``,
written at the start), ``metrics.json`` (held-out figures) and ``zf_plot.png``. Checkpoints live
in ``checkpoints/step_XXXXXXX/``.

Data, in order of precedence: a tensor passed to ``train(config, data=...)``, an activation cache
(``--activation-cache DIR`` from ``hf-topafa harvest``), or live harvesting. Held-out tokens come
from windows that training never reads (``HarvestConfig.holdout``), an ``--eval-cache``, or the
last rows of a tensor.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from ..helpers import is_finite_number
from ..sae.configuration_sae import SAEConfig
from ..sae.kfree import load_noise_levels_state, noise_levels_state
from ..sae.losses import reconstruction_loss
from ..sae.modeling_sae import SparseAutoencoder
from ..sae.reading import copy_weights
from .checkpoint import atomic_write_json, clean_temporaries, save_checkpoint
from .run_folder import (
    check_output_folder,
    finished_run_note,
    held_out_metrics,
    intact_checkpoint,
    recorded_config,
    save_final,
    summary,
)
from .train_config import (
    METRICS,
    TRAINING_CONFIG,
    TrainConfig,
    build_parser,
    load_config_file,
    parse_config,
)
from .training_data import (
    CacheSource,
    LiveSource,
    SyntheticSource,
    TensorSource,
    TrainingData,
    build_data,
    chain_first,
    endless_batches,
    first_rows,  # noqa: F401  (importable from here, as before the split)
)

__all__ = [  # the training API; each name lives in its own module (the run folder's file
    # names and flags' defaults in hf_topafa.train_config)
    "METRICS", "TRAINING_CONFIG",
    "CacheSource", "LiveSource", "SyntheticSource", "TensorSource", "TrainConfig", "build_parser",
    "build_optimizer", "cli_main", "held_out_metrics", "init_decoder_bias", "load_config_file",
    "lr_factor", "parse_config", "summary", "train", "train_step",
]  # fmt: skip

# --------------------------------------------------------------------------------------------
# Training


def lr_factor(step: int, total: int, warmup_fraction: float, decay_fraction: float) -> float:
    """Linear warmup over the first steps, constant, linear decay to 0 over the last steps."""
    warmup = int(total * warmup_fraction)
    decay = int(total * decay_fraction)
    if warmup and step < warmup:
        return (step + 1) / warmup
    if decay and step >= total - decay:
        return max(0.0, (total - step) / decay)
    return 1.0


def train(
    config: TrainConfig,
    data: torch.Tensor | str | os.PathLike | None = None,
    eval_data: torch.Tensor | None = None,
    provenance: dict | None = None,
) -> Path:
    """Train an SAE as ``config`` says and return the run folder.

    ``data``: an in-memory [tokens, d_in] tensor, or an activation-cache folder; None follows
    ``config`` (``activation_cache``, else live harvesting). ``eval_data``: held-out rows; by
    default the last ``eval_tokens`` rows of a tensor, the held-out windows otherwise (fresh
    samples of the world for a synthetic cache). ``provenance``: what a tensor is (``base_model``,
    ``layer``, ``hook_point``, ``dataset``, ...), recorded in config.json; unknown (None) when
    not given, since a tensor does not say. Caches record their own.
    """
    from accelerate.utils import set_seed

    started = time.perf_counter()
    config = dataclasses.replace(config)  # a copy of every section, validated again
    if isinstance(data, str | os.PathLike):
        config.data.activation_cache, data = os.fspath(data), None
    run = Path(config.run.output)
    note = finished_run_note(config)  # before anything is written
    if note is not None:
        if int(os.environ.get("RANK", "0")) == 0:
            print(note, flush=True)
        return run
    accelerator, tracker = _make_accelerator(config, run)
    is_main, world = accelerator.is_main_process, accelerator.num_processes
    resuming, found = _prepare_run_folder(config, run, accelerator)

    data_ = build_data(
        config, data, eval_data, accelerator, config.optim.batch_size // world, provenance
    )
    sae_config = _sae_config(config, data_)
    if is_main:
        print(_plan(config, sae_config, data_, world), flush=True)
        run.mkdir(parents=True, exist_ok=True)
        clean_temporaries(run)
        if not resuming:
            atomic_write_json(run / TRAINING_CONFIG, recorded_config(config))

    set_seed(config.optim.seed)
    sae = _new_sae(sae_config, config.optim, accelerator.device)
    optimizer, scheduler = build_optimizer(sae, config)
    state, since_fired = _restore(found, sae, optimizer, scheduler, accelerator, config)
    if found is None and resuming and is_main:
        print(f"note: {run} has no checkpoint yet; starting from step 0")

    model, optimizer = accelerator.prepare(sae, optimizer)
    sae = accelerator.unwrap_model(model)
    if tracker is not None:
        _start_tracking(accelerator, config, run)

    batches = endless_batches(data_.source, state["positions"][accelerator.process_index])
    if state["step"] == 0 and config.optim.decoder_bias_init == "mean":
        first, position = next(batches)
        init_decoder_bias(sae, first.to(accelerator.device), accelerator)
        batches = chain_first(first, position, batches)

    total_steps = config.steps
    bar = _progress(config, accelerator, total_steps, state["step"])
    loop_started = time.perf_counter()
    step = state["step"]
    threshold = sae_config.dead_tokens_threshold
    logged: dict[str, float] = {}
    model.train()
    while step < total_steps:
        x, position = next(batches)
        x = x.to(accelerator.device, non_blocking=True)
        dead = since_fired >= threshold
        out = train_step(model, sae, optimizer, scheduler, x, dead, config, accelerator)

        fired = (out.feature_acts.detach() != 0).any(0).to(torch.long)
        if world > 1:
            fired = accelerator.reduce(fired, "sum")
        since_fired += config.optim.batch_size
        since_fired.masked_fill_(fired > 0, 0)  # a mask index would wait on a GPU
        step += 1
        state["positions"][accelerator.process_index] = position

        if step % config.run.log_every == 0 or step == total_steps:
            logged = _log_step(accelerator, out, dead, step, scheduler, config)
            _show(bar, logged)
        if bar is not None:
            bar.update(1)
        every = config.run.checkpoint_every
        if every and (step % every == 0 or step == total_steps):
            state.update(step=step, tokens=step * config.optim.batch_size)
            state["train_seconds"] += time.perf_counter() - loop_started
            loop_started = time.perf_counter()
            _save(accelerator, run, sae, optimizer, scheduler, since_fired, state, config)
    if bar is not None:
        bar.close()
    state["train_seconds"] += time.perf_counter() - loop_started
    replica_gap = _replica_gap(sae, accelerator) if world > 1 else 0.0

    if is_main:
        top, diagnostics = held_out_metrics(sae, data_.eval_x.to(accelerator.device))
        metrics = {
            "tokens_trained": step * config.optim.batch_size,
            "steps": step,
            "world_size": world,
            "wall_time_s": round(time.perf_counter() - started, 2),
            "train_time_s": round(state["train_seconds"], 2),
            "dead_features": int((since_fired >= threshold).sum()),
            "dead_tokens_threshold": threshold,
            "final_train_loss": logged.get("train/loss"),
            "held_out": data_.held_out,
            "replica_max_abs_diff": replica_gap,
            **top,
        }
        save_final(run, sae, metrics, diagnostics, config)
        accelerator.log(
            {f"final/{k}": v for k, v in metrics.items() if is_finite_number(v)}, step=step
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run


def train_step(model, sae, optimizer, scheduler, x, dead, config: TrainConfig, accelerator):
    """One optimizer step, in the paper's order; returns the forward's SAEOutput.

    Loss, backward, gradient clipping, then the radial part of each decoder row's gradient
    projected out and the rows renormalized, then Adam. ``hf-topafa bench`` times this function.
    """
    out = model(x, dead_mask=dead)
    world = accelerator.num_processes
    loss = out.loss if world == 1 else _global_norm_loss(out, x, sae, accelerator)
    accelerator.backward(loss)
    if config.optim.max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), config.optim.max_grad_norm)
    sae.remove_gradient_parallel_to_decoder_directions()
    sae.set_decoder_norm_to_unit_norm()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return out


def _make_accelerator(config: TrainConfig, run: Path):
    """The Accelerator (bf16 autocast on GPU under ``auto``) and the tracker's name, or None."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    mixed = config.optim.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() else "no"
    tracker = _tracker_name(config.run.log_with)
    accelerator = Accelerator(
        mixed_precision=mixed,
        cpu=not torch.cuda.is_available(),
        log_with=tracker,
        project_config=ProjectConfiguration(project_dir=str(run), logging_dir=str(run / "logs")),
    )
    if config.optim.batch_size % accelerator.num_processes:
        raise ValueError(
            f"batch_size={config.optim.batch_size} must be divisible by the number of processes "
            f"({accelerator.num_processes})"
        )
    return accelerator, tracker


def _prepare_run_folder(config: TrainConfig, run: Path, accelerator):
    """Check --output, delete it under --overwrite; returns (resuming, intact checkpoint)."""
    is_main = accelerator.is_main_process
    resuming, delete = check_output_folder(config)
    found = intact_checkpoint(run, config, resuming, is_main)
    accelerator.wait_for_everyone()
    if is_main and delete:
        shutil.rmtree(run)
    if is_main and resuming and not config.run.resume:
        print(f"note: {run} holds this same run; continuing it (--overwrite starts again)")
    accelerator.wait_for_everyone()
    return resuming, found


def _new_sae(sae_config: SAEConfig, optim, device) -> SparseAutoencoder:
    """The SAE on the training device: freshly initialised from the seed, or with the weights of
    ``optim.init_from`` (``reading.copy_weights``)."""
    sae = SparseAutoencoder(sae_config)
    if optim.init_from is None:
        sae.reset_parameters(seed=optim.seed)
    else:
        source = SparseAutoencoder.from_pretrained(optim.init_from)
        for name in ("d_in", "d_sae", "input_normalization"):
            ours, theirs = getattr(sae_config, name), getattr(source.config, name)
            if ours != theirs:
                raise ValueError(
                    f"--init-from {optim.init_from} has {name}={theirs!r}, this run {ours!r}; "
                    f"they must match"
                )
        copy_weights(source, sae)
    return sae.to(device)


def _start_tracking(accelerator, config: TrainConfig, run: Path) -> None:
    """Open the experiment tracker with the flat configuration as its hyperparameters."""
    flat = {
        k: v if isinstance(v, int | float | str | bool) else str(v)
        for k, v in config.to_flat().items()
    }
    accelerator.init_trackers("hf-topafa", config=flat, init_kwargs=_tracker_kwargs(run))


def _sae_config(config: TrainConfig, data_: TrainingData) -> SAEConfig:
    """The SAE's config from the SAE settings and the data's width and provenance. What was
    resolved (d_sae, the dead-feature threshold, and a cache's layer, hook point and context
    length) is written back into ``config``, so that training_config.json records it."""
    sae_config = SAEConfig.from_settings(
        config.sae,
        d_in=data_.source.d_in,
        dead_tokens_threshold=config.resolved_dead_threshold(),
        **data_.provenance,
    )
    config.sae.d_sae = sae_config.d_sae
    config.sae.dead_tokens_threshold = sae_config.dead_tokens_threshold
    for key in ("layer", "hook_point", "context_length"):
        if data_.provenance[key] is not None:
            setattr(config.data, key, data_.provenance[key])
    return sae_config


def build_optimizer(sae, config: TrainConfig):
    """Adam over the SAE and the schedule of warmup and decay over ``config.steps``."""
    opt = config.optim
    optimizer = torch.optim.Adam(
        sae.parameters(),
        lr=opt.lr,
        betas=(opt.adam_beta1, opt.adam_beta2),
        eps=opt.adam_eps,
        fused=True,  # one kernel for the whole update: several times faster on CPU and GPU
    )
    total = config.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, opt.warmup_fraction, opt.decay_fraction)
    )
    return optimizer, scheduler


def _restore(found, sae, optimizer, scheduler, accelerator, config: TrainConfig):
    """A fresh (state, since_fired), or the intact checkpoint's, loaded into the SAE and
    optimizer."""
    world = accelerator.num_processes
    state = {"step": 0, "tokens": 0, "positions": [[0, 0]] * world, "train_seconds": 0.0}
    since_fired = torch.zeros(sae.config.d_sae, dtype=torch.long, device=accelerator.device)
    if found is None:
        return state, since_fired
    checkpoint, (model_state, optim_state, tensors, state) = found
    if len(state["positions"]) != world:
        raise ValueError(
            f"{checkpoint} was written by {len(state['positions'])} processes; resume it "
            f"with the same number (now {world})"
        )
    sae.load_state_dict(model_state)
    optimizer.load_state_dict(optim_state)
    scheduler.load_state_dict(state.pop("scheduler"))
    since_fired = tensors["since_fired"].to(accelerator.device)
    load_noise_levels_state(sae, tensors, accelerator.device)
    for name, value in state.pop("model_runtime", {}).items():
        setattr(sae, name, value)
    if accelerator.is_main_process:
        print(f"resuming from {checkpoint} (step {state['step']} of {config.steps})")
    return state, since_fired


def _show(bar, logged: dict[str, float]) -> None:
    if bar is not None:
        bar.set_postfix(
            loss=f"{logged['train/loss']:.4f}",
            L0=f"{logged['train/l0']:.1f}",
            nmse=f"{logged['train/normalized_mse']:.4f}",
            dead=int(logged["train/dead_features"]),
            refresh=False,
        )


def _plan(config: TrainConfig, sae_config: SAEConfig, data_: TrainingData, world: int) -> str:
    source = data_.source
    if isinstance(source, LiveSource):
        tokens = config.data.harvest_tokens
        limit = "all" if tokens is None else f"up to {tokens:,}"
        reads = f"live harvest of {limit} tokens per pass from {sae_config.dataset}"
    elif isinstance(source, CacheSource):
        reads = f"activation cache {config.data.activation_cache}"
    elif isinstance(source, SyntheticSource):
        reads = f"samples of {config.data.synthetic} drawn while training"
    else:
        reads = f"an in-memory tensor of {len(source.x):,} tokens"
    origin = sae_config.base_model or "data of unknown origin"
    if sae_config.layer is not None:
        origin += f" layer {sae_config.layer} {sae_config.hook_point}"
    return (
        f"training a {sae_config.activation} SAE ({sae_config.d_in} -> {sae_config.d_sae}) on "
        f"{origin}: "
        f"{config.steps} steps x {config.optim.batch_size} tokens on {world} process(es); data: "
        f"{reads}; held-out: {config.data.eval_tokens:,} tokens; run folder: {config.run.output}"
    )


@torch.no_grad()
def init_decoder_bias(sae, x: torch.Tensor, accelerator) -> None:
    """b_dec = the mean (in the SAE's input space) of the first batch, over all processes."""
    x_n, _, _ = sae.normalize_input(x.to(sae.W_dec.dtype))
    mean = x_n.mean(0)
    if accelerator.num_processes > 1:
        mean = accelerator.reduce(mean, "mean")
    sae.b_dec.copy_(mean)


def _global_norm_loss(out, x, sae, accelerator) -> torch.Tensor:
    """Re-weight this process's loss terms so that DDP's gradient average equals the gradient of
    one process on the whole global batch.

    Each term is divided by a batch statistic (``SAEOutput.loss_scale`` and ``aux_scale``: a sum
    or mean of squares, or 1 on standardized inputs under the paper's convention); multiplying
    a term by local / mean-over-processes of its divisor turns the average of ratios into the
    global ratio. The sparsity terms are token means already.
    """
    with torch.no_grad():
        local = torch.stack([out.loss_scale.float(), out.aux_scale.float()]).clamp_min(1e-12)
        weight = local / accelerator.reduce(local.clone(), "mean")
    cfg = sae.config
    recon = reconstruction_loss(out.mse_loss, out.matryoshka_loss, cfg.matryoshka_levels)
    return (
        out.loss
        + (weight[0] - 1) * (recon + cfg.afa_coef * out.afa_loss)
        + (weight[1] - 1) * cfg.aux_coef * out.aux_loss
    )


@torch.no_grad()
def _replica_gap(sae, accelerator) -> float:
    """Largest difference between processes of per-parameter sums and sums of squares (DDP check)."""
    stats = torch.stack(
        [s for p in sae.parameters() for s in (p.double().sum(), p.double().pow(2).sum())]
    )
    gathered = accelerator.gather(stats.unsqueeze(0))
    return (gathered - gathered[0]).abs().max().item()


def _log_step(accelerator, out, dead, step, scheduler, config) -> dict[str, float]:
    values = torch.stack(
        [
            out.loss.detach().float(),
            out.mse_loss.detach().float(),
            out.afa_loss.detach().float(),
            out.aux_loss.detach().float(),
            out.l0.detach().float().mean(),
            (
                out.k.detach().float().mean()
                if out.k is not None
                else out.l0.detach().float().mean()
            ),
        ]
    )
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values, "mean")
    loss, mse, afa_loss, aux, l0, k = values.tolist()
    logged = {
        "train/loss": loss,
        "train/normalized_mse": mse,
        "train/afa_loss": afa_loss,
        "train/aux_loss": aux,
        "train/l0": l0,
        "train/k": k,
        "train/dead_features": float(dead.sum()),
        "train/lr": scheduler.get_last_lr()[0],
        "train/tokens": float(step * config.optim.batch_size),
    }
    accelerator.log(logged, step=step)
    return logged


def _save(accelerator, run, sae, optimizer, scheduler, since_fired, state, config) -> None:
    """Gather every process's data position, then the main process writes the checkpoint."""
    if accelerator.num_processes > 1:
        mine = torch.tensor(
            state["positions"][accelerator.process_index], device=since_fired.device
        )
        state["positions"] = accelerator.gather(mine.unsqueeze(0)).tolist()
    if accelerator.is_main_process:
        save_checkpoint(
            run,
            state["step"],
            sae.state_dict(),
            optimizer.state_dict(),
            {"since_fired": since_fired, **noise_levels_state(sae)},
            {**state, "scheduler": scheduler.state_dict(), "model_runtime": _runtime_state(sae)},
            keep=config.run.keep_checkpoints,
        )
    accelerator.wait_for_everyone()


# Plain attributes of the SAE, outside its state dict, that its forward pass reads and updates.
# Top-AFA's candidate count and mean k pick the code path and so the float rounding, which
# top-AFA's nearest-norm choice can amplify; a checkpoint keeps them so a resumed run matches a
# straight one.
_RUNTIME_ATTRIBUTES = ("_topafa_candidates", "_topafa_mean_k")


def _runtime_state(sae) -> dict:
    return {name: getattr(sae, name) for name in _RUNTIME_ATTRIBUTES if hasattr(sae, name)}


def _progress(config, accelerator, total, done):
    if not (config.run.progress and accelerator.is_main_process):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="train", unit="step", dynamic_ncols=True)


def _tracker_name(choice: str) -> str | None:
    """auto: TensorBoard when it is installed (local files, no account), else no tracker."""
    if choice == "auto":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return None
        return "tensorboard"
    return None if choice == "none" else choice


def _tracker_kwargs(run: Path) -> dict:
    name = run.resolve().name
    return {"trackio": {"name": name}, "wandb": {"name": name}}


if __name__ == "__main__":
    from ..cli.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))


def run_command(config: TrainConfig) -> int:
    """``hf-topafa train`` once its arguments are checked: train and print the figures."""
    run = train(config)  # errors: one line each from hf_topafa.cli
    if int(os.environ.get("RANK", "0")) == 0:
        print(summary(run))
    return 0


def cli_main(argv: list[str] | None = None) -> int:
    """``hf-topafa train ...`` from Python: the command line's checks, errors and exit status."""
    from ..cli.cli import main

    return main(["train", *(sys.argv[1:] if argv is None else argv)])
