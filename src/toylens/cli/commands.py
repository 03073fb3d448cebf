"""The pipeline's commands: train, sweep, summary, analyze, development, export, report, reproduce.
Each parses its arguments and calls the Python API."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from toylens.cli.app import CheckpointOption, DeviceOption, SetOption, app, metrics_line, user_errors
from toylens.errors import ToylensError


@app.command()
@user_errors
def train(
    config: Path = typer.Argument(..., help="Run config (YAML): task, model, train."),
    set_: list[str] | None = SetOption,
    out: Path = typer.Option(
        Path("runs"), "--out", help="Directory holding run directories; the run goes to OUT/<name>."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last epoch checkpoint."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Delete an existing run directory of the same name first."
    ),
    device: str = DeviceOption,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    wandb: bool = typer.Option(
        False,
        "--wandb",
        help="Log config and per-epoch metrics to Weights & Biases "
        "(needs toylens[wandb]; WANDB_MODE=offline works without an account).",
    ),
    wandb_project: str = typer.Option("toylens", "--wandb-project", help="W&B project for --wandb."),
) -> None:
    """Train a model from CONFIG into OUT/<name>: metrics.jsonl, a checkpoint per epoch, final.safetensors.

    Under torchrun (e.g. `torchrun --nproc_per_node 4 -m toylens.cli train CONFIG`) each process
    trains one shard of every batch with DistributedDataParallel; rank 0 writes the run."""
    from toylens.train import train as api_train

    callbacks = []
    if wandb:
        from toylens.train.wandb_log import WandbLogger

        callbacks.append(WandbLogger(project=wandb_project))
    result = api_train(
        config,
        out,
        overrides=tuple(set_ or ()),
        resume=resume,
        overwrite=overwrite,
        device=device,
        progress=progress,
        callbacks=callbacks,
    )
    if result.metrics:  # empty on the ranks other than 0 under torchrun
        typer.echo(f"run: {result.run_dir}")
        typer.echo(metrics_line(result.metrics))


EnsembleOption = typer.Option(
    None,
    "--ensemble/--no-ensemble",
    help="Train members that differ only in seed, lr, weight decay or L1 coefficient as one vectorised ensemble "
    "(default: on when training on a GPU).",
)
RayAddressOption = typer.Option(
    None,
    "--ray-address",
    help="Ray cluster to use with --backend ray (e.g. auto or ray://host:10001); default: start a local Ray.",
)


@app.command()
@user_errors
def sweep(
    spec: Path = typer.Argument(..., help="Sweep spec (YAML): name, base config, parameters, seeds."),
    out: Path = typer.Option(Path("runs"), "--out", help="Members go to OUT/<sweep name>/<member>."),
    backend: str = typer.Option("local", "--backend", help="local (parallel processes on this machine) or ray."),
    jobs: int = typer.Option(
        1, "--jobs", min=1, help="Local backend: jobs running at once (each gets cpu_count/jobs threads)."
    ),
    ensemble: bool | None = EnsembleOption,
    ensemble_size: int = typer.Option(32, "--ensemble-size", min=1, help="Most members in one ensemble."),
    wandb: bool = typer.Option(
        False, "--wandb", help="Log every member to W&B, grouped by sweep (needs toylens[wandb])."
    ),
    ray_address: str | None = RayAddressOption,
    device: str = DeviceOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="List the members and exit."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train every member of a sweep that is not finished; write OUT/<sweep>/summary.csv and sweep.json.

    Rerunning the same command skips finished members, resumes interrupted ones and retries failed
    ones. Exit code 1 if any member failed (the others still finish)."""
    from toylens.sweep import expand, format_table, load_sweep, run_sweep
    from toylens.sweep.runner import SweepFailed

    parsed, root = load_sweep(spec)
    if dry_run:
        for m in expand(parsed, root, str(spec)):
            typer.echo(f"{m.name}  seed={m.seed}  " + "  ".join(f"{k}={v}" for k, v in m.params.items()))
        return
    try:
        result = run_sweep(
            spec,
            out,
            backend=backend,
            jobs=jobs,
            ensemble=ensemble,
            ensemble_size=ensemble_size,
            wandb=wandb,
            device=device,
            ray_address=ray_address,
            progress=progress,
        )
    except KeyboardInterrupt:
        typer.echo("interrupted; run the same command again to continue", err=True)
        raise typer.Exit(130) from None
    typer.echo(format_table(result.rows, varied=list(parsed.parameters)))
    typer.echo(f"summary: {result.sweep_dir / 'summary.csv'}")
    if result.failed:
        raise SweepFailed(
            f"{len(result.failed)} of {len(result.rows)} members did not finish; see {result.sweep_dir / 'summary.csv'}"
        )


@app.command()
@user_errors
def summary(runs: list[Path] = typer.Argument(..., help="Run directories.")) -> None:
    """Print each run's final metrics (one line per run)."""
    from toylens.rundir import RunDir

    for path in runs:
        run = RunDir(path)
        if not run.has("summary.json"):
            typer.echo(f"{path}: not finished ({len(run.checkpoints())} checkpoints)")
            continue
        s = run.read_json("summary.json")
        typer.echo(f"{path}: {metrics_line(s['final'])}  ({s['wall_s']:.0f}s on {s['device']})")


@app.command()
@user_errors
def analyze(
    run: Path = typer.Argument(..., help="Run directory."),
    checkpoint: str = CheckpointOption("final"),
    only: list[str] | None = typer.Option(
        None, "--only", help="Run only this analysis or group, e.g. patching or head_scores/repeated (repeatable)."
    ),
    metric: str | None = typer.Option(
        None, "--metric", help="Patching metric: logit_diff, neg_loss or accuracy (default: the task's)."
    ),
    examples: int = typer.Option(
        256, "--examples", min=1, help="Task examples for head scores, attribution, sparsity and ablations."
    ),
    pairs: int = typer.Option(
        32,
        "--patch-pairs",
        min=1,
        help="Clean/corrupted pairs for patching (fewer are used "
        "when one stacked batch of logits would not fit, e.g. with a 50K vocabulary).",
    ),
    neurons: bool = typer.Option(
        True,
        "--neuron-ablations/--no-neuron-ablations",
        help="Also ablate every MLP neuron (slow with a large vocabulary).",
    ),
    device: str = DeviceOption,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Run every applicable analysis on RUN's checkpoints; results go to RUN/analysis/<checkpoint name>/ (done ones are
    skipped; final and best are stored under the checkpoint they stand for, e.g. epoch-0012)."""
    from toylens.analysis import Settings
    from toylens.analysis import analyze as api_analyze

    try:
        written = api_analyze(
            run,
            checkpoint,
            device=device,
            only=list(only or []) or None,
            settings=Settings(n_examples=examples, n_patch=pairs, patch_metric=metric, ablate_neurons=neurons),
            progress=progress,
        )
    except KeyboardInterrupt:
        typer.echo("interrupted; finished results are kept: run the same command again to continue", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"{run}/analysis: {len(written)} new results")


@app.command()
@user_errors
def development(
    run: Path = typer.Argument(..., help="Run directory."),
    probe: int = typer.Option(32, "--probe", min=1, help="Evaluation examples in the fixed probe set."),
    seed: int = typer.Option(0, "--seed", help="Seed of the probe set's draw from the evaluation split."),
    bandwidth: float = typer.Option(
        0.1, "--bandwidth", min=0.0, help="Gaussian smoothing of the curves, in decades of (1 + step)."
    ),
    device: str = DeviceOption,
) -> None:
    """Essential dynamics (PCA of the log-probs on a fixed probe set at every checkpoint) into
    RUN/development/essential_dynamics, then the stage boundaries of the probe loss and (after `toylens llc`)
    the LLC curve into RUN/development/stages.json."""
    from toylens.development import development as api_development

    ed, stages = api_development(run, n_probe=probe, seed=seed, bandwidth=bandwidth, device=device)
    share = ", ".join(f"{v:.1%}" for v in ed.explained_variance[:3].tolist())
    typer.echo(f"{run}/analysis: essential dynamics of {len(ed.checkpoints)} checkpoints (PC1-3 explain {share})")
    typer.echo(f"stages ({stages.smoothing}):")
    for b in stages.boundaries:
        typer.echo(f"  {b['curve']:12s} {b['kind']:14s} {b['checkpoint']:14s} step {b['step']}")


@app.command()
@user_errors
def export(
    run: Path = typer.Argument(..., help="Run directory."),
    to: str = typer.Option(..., "--to", help="Target format: transformer-lens."),
    checkpoint: str = CheckpointOption("final"),
    device: str = DeviceOption,
) -> None:
    """Export one checkpoint of RUN for another library into RUN/export/<format>/<checkpoint name>.safetensors
    (needs: pip install 'toylens[tl]')."""
    if to != "transformer-lens":
        raise ToylensError(f"--to {to!r}: the supported target is transformer-lens")
    from toylens.export import export_transformer_lens

    path = export_transformer_lens(run, checkpoint, device=device)
    typer.echo(f"wrote {path}; load it with toylens.export.load_transformer_lens(path)")


@app.command()
@user_errors
def report(
    runs: list[Path] = typer.Argument(
        ...,
        help="Run directories to show side by side; a sweep directory stands for "
        "its finished members plus a table of every member.",
    ),
    out: Path = typer.Option(
        Path("report.html"), "-o", "--out", help="The HTML file to write; PNG figures go to <stem>_figures/ beside it."
    ),
    title: str | None = typer.Option(None, "--title", help="Page title (default: the run names)."),
    png: bool = typer.Option(True, "--png/--no-png", help="Also write every figure as a PNG file (needs matplotlib)."),
    checkpoint: str | None = CheckpointOption(None, "final where analysed, else the last analysed"),
) -> None:
    """Write one self-contained HTML report (no network needed to view it) comparing RUNS from their saved results.

    --checkpoint picks, in every run, the analysed checkpoint whose results (circuits, patching, ablations, ...)
    are shown in full; curves over training use every analysed checkpoint either way."""
    from toylens.report import report as api_report

    result = api_report(runs, out, title=title, png=png, checkpoint=checkpoint)
    typer.echo(f"report: {result.path}")


@app.command()
@user_errors
def reproduce(
    study: str = typer.Argument(
        ...,
        help="A study name (sorting-weight-decay, imdb-attention, wikitext, "
        "induction-heads; see configs/studies/) or a study YAML file.",
    ),
    quick: bool | None = typer.Option(
        None,
        "--quick/--full",
        help="--quick: a small version that finishes in minutes on a CPU; --full (default): the study as published.",
    ),
    smoke: bool = typer.Option(
        False,
        "--smoke",
        help="The quick size cut to a few examples and steps (the study's "
        "smoke: section): every step and call of --quick in seconds, for CI; its numbers mean nothing.",
    ),
    device: str = DeviceOption,
    out: Path = typer.Option(
        Path("runs"),
        "--out",
        help="Parent directory: runs and report go to OUT/<study> "
        "(OUT/<study>-quick with --quick, OUT/<study>-smoke with --smoke).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    png: bool = typer.Option(
        True, "--png/--no-png", help="Also write the report's figures as PNG files (needs matplotlib)."
    ),
) -> None:
    """Reproduce a study end to end: train -> analyze -> llc -> development (where a study lists it) -> report.
    Rerunning skips what is done."""
    from toylens.reproduce import reproduce as api_reproduce

    if smoke and quick is False:
        raise ToylensError("--smoke is a cut of the quick size; it cannot be combined with --full")
    size: Literal["quick", "full", "smoke"] = "smoke" if smoke else "quick" if quick else "full"
    result = api_reproduce(study, size=size, device=device, out=out, progress=progress, png=png)
    typer.echo(f"{result.study}: {len(result.runs)} runs in {result.folder} ({result.wall_s:.0f}s)")
    if result.report is not None:
        typer.echo(f"report: {result.report}")
