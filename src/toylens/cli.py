"""The `toylens` command. Each subcommand parses its arguments and calls the Python API.

Errors in what the user gave (config fields, paths, checkpoints) print one line and exit 2.
Every command that computes takes --device (default auto: cuda if available, else cpu), and
every --set is read by one function, `toylens.config.apply_sets`.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import typer
from tqdm.auto import tqdm
from typer.core import TyperGroup

from toylens import checkpoints
from toylens.errors import ToylensError

if TYPE_CHECKING:
    from toylens.llc import Calibration, LLCSettings
    from toylens.run import RunDir

app = typer.Typer(
    help="Train small transformers from scratch and open them up: hooks, circuits, patching, LLC, reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(
    help="Inspect configs: every field with its meaning, or a resolved config.", no_args_is_help=True
)
app.add_typer(config_app, name="config")


class _DefaultToEstimate(TyperGroup):
    """`toylens llc RUN ...` means `toylens llc estimate RUN ...`; `toylens llc calibrate RUN` stays."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["estimate", *args]
        return super().parse_args(ctx, args)


llc_app = typer.Typer(
    cls=_DefaultToEstimate,
    no_args_is_help=True,
    help=(
        "Local learning coefficient (LLC) of checkpoints by batched SGLD: `toylens llc RUN` estimates every "
        "checkpoint into RUN/llc/; `toylens llc calibrate RUN` picks the step size and localisation first."
    ),
)
app.add_typer(llc_app, name="llc")

SET_VALUES = (
    "VALUE is read as YAML (0.1, 1e-4, true, null, [a, b]), except that a text field keeps it as "
    "written: --set name=123 names the run 123."
)
SetOption = typer.Option(
    None,
    "--set",
    metavar="KEY=VALUE",
    help=(
        "Override a config field, e.g. --set train.weight_decay=0.1 (repeatable; KEY is a dotted field, "
        "see `toylens config fields`). " + SET_VALUES
    ),
)
DeviceOption = typer.Option(
    "auto", "--device", help="Torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1."
)


def CheckpointOption(default: str | None, shown: str | None = None) -> Any:
    """The --checkpoint option of every command that reads checkpoints: one spelling, one help text."""
    return typer.Option(default, "--checkpoint", help=checkpoints.HELP, show_default=shown or True)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn ToylensError into one line on stderr and its exit code (2 for bad input)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ToylensError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; continue with --resume", err=True)
            raise typer.Exit(130) from None

    return wrapper


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
        typer.echo(_metrics_line(result.metrics))


@app.command()
@user_errors
def sweep(
    spec: Path = typer.Argument(..., help="Sweep spec (YAML): name, base config, parameters, seeds."),
    out: Path = typer.Option(Path("runs"), "--out", help="Members go to OUT/<sweep name>/<member>."),
    backend: str = typer.Option("local", "--backend", help="local (parallel processes on this machine) or ray."),
    jobs: int = typer.Option(
        1, "--jobs", min=1, help="Local backend: jobs running at once (each gets cpu_count/jobs threads)."
    ),
    ensemble: bool | None = typer.Option(
        None,
        "--ensemble/--no-ensemble",
        help="Train members that differ only in "
        "seed, lr, weight decay or L1 coefficient as one vectorised ensemble "
        "(default: on when training on a GPU).",
    ),
    ensemble_size: int = typer.Option(32, "--ensemble-size", min=1, help="Most members in one ensemble."),
    wandb: bool = typer.Option(
        False, "--wandb", help="Log every member to W&B, grouped by sweep (needs toylens[wandb])."
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        help="Ray cluster to use with --backend ray (e.g. auto or ray://host:10001); default: start a local Ray.",
    ),
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
    from toylens.run import RunDir

    for path in runs:
        run = RunDir(path)
        if not run.has("summary.json"):
            typer.echo(f"{path}: not finished ({len(run.checkpoints())} checkpoints)")
            continue
        s = run.read_json("summary.json")
        typer.echo(f"{path}: {_metrics_line(s['final'])}  ({s['wall_s']:.0f}s on {s['device']})")


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
    RUN/analysis/essential_dynamics, then the stage boundaries of the probe loss and (after `toylens llc`)
    the LLC curve into RUN/analysis/stages.json."""
    from toylens.analysis.development import development as api_development

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


@config_app.command("fields")
def config_fields() -> None:
    """List every config field with its type and meaning."""
    from toylens.config import field_docs

    for name, typ, doc in field_docs():
        typer.echo(f"{name:28s} {typ:22s} {doc}")


@config_app.command("show")
@user_errors
def config_show(
    config: Path = typer.Argument(..., help="Run config (YAML)."), set_: list[str] | None = SetOption
) -> None:
    """Validate CONFIG (with overrides) and print it with every default and derived value filled in."""
    from toylens.config import config_to_yaml, load_config
    from toylens.tasks import build_task

    cfg = load_config(config, tuple(set_ or ()))
    spec = build_task(cfg.task).spec
    typer.echo(config_to_yaml(cfg.resolved(spec.d_vocab, spec.d_vocab_out, spec.n_ctx)), nl=False)


@config_app.command("list")
@user_errors
def config_list() -> None:
    """List the configs shipped with toylens (run configs, studies/, sweeps/) as the paths the
    commands take; from a folder without its own configs/, such a path reads the shipped file."""
    from toylens.config import SHIPPED

    for path in sorted(SHIPPED.rglob("*.yaml"), key=lambda p: (len(p.relative_to(SHIPPED).parts), p.as_posix())):
        typer.echo(f"configs/{path.relative_to(SHIPPED).as_posix()}")


LLCSetOption = typer.Option(
    None,
    "--set",
    metavar="KEY=VALUE",
    help=(
        "Override an LLC setting, e.g. --set chains=8 --set epsilon=1e-4 (repeatable). KEY is a setting, bare or "
        "as in a study's llc: section (llc.chains=8 is chains=8): epsilon, gamma, nbeta, batch_size, chains, draws, "
        "burnin, thin, precondition, rmsprop_alpha, rmsprop_delta, weight_decay, l1, init_batches, mala_every, seed. "
        + SET_VALUES
    ),
)


@llc_app.command("estimate")
@user_errors
def llc_estimate(
    run: Path = typer.Argument(..., help="Run directory."),
    checkpoint: str | None = CheckpointOption(None, "all"),
    set_: list[str] | None = LLCSetOption,
    device: str = DeviceOption,
    group: int = typer.Option(16, "--group", min=1, help="Checkpoints sampled together in one batched computation."),
    restrict: list[str] | None = typer.Option(
        None,
        "--restrict",
        help="Refined LLC: sample only this part of the weights, the rest frozen (repeatable): heads (one "
        "per head, l0h0 ...), layers (l0.attn, l0.mlp ...), embed, unembed, one name (l1h2, l0.attn) or "
        "comma-separated parameter-name globs (blocks.0.attn.W_*); options after colons give its own nβ "
        "and γ (heads:gamma=1000:nbeta=20). Writes RUN/llc/restricted/<restriction>/<checkpoint>.json "
        "instead of the whole-model estimates.",
    ),
    data_restrict: str | None = typer.Option(
        None,
        "--data-restrict",
        help="Data-restricted LLC: the sampled loss is taken on one subset of the targets only (induction: "
        "copied, uncopied; sort: output0, output1, ...; lm: punctuation, other). Alone it restricts the "
        "whole model (--restrict all); with --restrict, each restriction. Writes "
        "RUN/llc/restricted/<restriction>@<subset>/<checkpoint>.json.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Estimate the LLC of RUN's checkpoints (--checkpoint; all by default) into RUN/llc/<checkpoint name>.json
    (+ traces); skips those done. With --restrict and/or --data-restrict, the refined LLC of each
    restriction instead."""
    from toylens.llc import llc_over_checkpoints
    from toylens.run import as_rundir

    rundir = as_rundir(run)
    settings = _llc_settings(rundir, set_)
    if restrict or data_restrict:
        chosen = checkpoint or "all"
        _llc_restricted(rundir, restrict or ["all"], data_restrict, chosen, settings, device, group, progress)
        return
    results = llc_over_checkpoints(
        rundir, checkpoint or "all", settings=settings, device=device, group=group, progress=progress
    )
    typer.echo(f"{'checkpoint':14s} {'train_loss':>10s} {'llc':>9s} {'± se':>7s} {'accept':>6s}  warnings")
    for name, r in results.items():
        se = r.get("llc_se")
        typer.echo(
            f"{name:14s} {r['train_loss']:10.4g} {r['llc']:9.3f} {se if se is not None else float('nan'):7.3f} "
            f"{r['acceptance'] if r['acceptance'] is not None else float('nan'):6.3f}  {', '.join(r['flags']) or '-'}"
        )


def _llc_restricted(
    run: RunDir,
    restrict: list[str],
    data: str | None,
    checkpoint: str,
    settings: LLCSettings,
    device: str,
    group: int,
    progress: bool,
) -> None:
    from toylens.llc import restricted_llc

    results = restricted_llc(
        run, restrict, checkpoint, settings=settings, data=data, device=device, group=group, progress=progress
    )
    typer.echo(
        f"{'restriction':16s} {'checkpoint':14s} {'params':>7s} {'llc':>9s} {'± se':>7s} {'accept':>6s}  warnings"
    )
    for name, per_ckpt in results.items():
        for ckpt, r in per_ckpt.items():
            se, acc = r.get("llc_se"), r.get("acceptance")
            typer.echo(
                f"{name:16s} {ckpt:14s} {sum(r['params'].values()):7d} {r['llc']:9.3f} "
                f"{se if se is not None else float('nan'):7.3f} {acc if acc is not None else float('nan'):6.3f}  "
                f"{', '.join(r['flags']) or '-'}"
            )


@llc_app.command("calibrate")
@user_errors
def llc_calibrate(
    run: Path = typer.Argument(..., help="Run directory."),
    checkpoint: str = CheckpointOption("final"),
    epsilons: str = typer.Option("1e-4,3e-4,1e-3,3e-3", "--epsilons", help="Step sizes to try (comma-separated)."),
    gammas: str = typer.Option("300,1000", "--gammas", help="Localisation strengths to try (comma-separated)."),
    set_: list[str] | None = LLCSetOption,
    device: str = DeviceOption,
    restrict: list[str] | None = typer.Option(
        None,
        "--restrict",
        help="Calibrate each weight restriction (as `toylens llc --restrict`: heads, layers, l1h0, globs) on "
        "its own: one pick per restriction into RUN/llc/restricted/calibration.json, which `toylens llc "
        "--restrict` then uses.",
    ),
    data_restrict: str | None = typer.Option(
        None, "--data-restrict", help="As `toylens llc --data-restrict`: calibrate <restriction>@<subset>."
    ),
    write: bool = typer.Option(
        True, "--write/--no-write", help="Write the sweep and the chosen settings into RUN/llc/."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Sweep epsilon x gamma on one checkpoint (--checkpoint), show which give flat healthy traces, save the
    pick; with --restrict (and/or --data-restrict), one sweep and pick per restriction."""
    from toylens.llc import calibrate, calibrate_restricted
    from toylens.run import as_rundir

    rundir = as_rundir(run)
    settings = _llc_settings(rundir, set_)
    common: dict[str, Any] = dict(
        epsilons=_floats(epsilons, "--epsilons"),
        gammas=_floats(gammas, "--gammas"),
        settings=settings,
        device=device,
        write=write,
        progress=progress,
    )
    if restrict or data_restrict:
        cals = calibrate_restricted(rundir, restrict or ["all"], checkpoint, data=data_restrict, **common)
        for name, cal in cals.items():
            typer.echo(f"{name}:")
            _show_calibration(cal)
        missing = [name for name, cal in cals.items() if cal.chosen is None]
        where = f" -> {rundir.path / 'llc/restricted/calibration.json'}" if write else ""
        typer.echo(f"chosen for {len(cals) - len(missing)} of {len(cals)} restrictions{where}")
        if missing:
            typer.echo(f"no setting gave usable traces for {', '.join(missing)}; they keep the run's", err=True)
            raise typer.Exit(1)
        return
    cal = calibrate(rundir, checkpoint, **common)
    _show_calibration(cal)
    if cal.chosen is None:
        typer.echo("no setting gave usable traces; try smaller epsilons or larger gammas", err=True)
        raise typer.Exit(1)
    pick = cal.estimates[cal.chosen]
    where = f" -> {rundir.path / 'llc/settings.json'}" if write else ""
    typer.echo(f"chosen: epsilon={pick.epsilon:g} gamma={pick.gamma:g}{where}")


def _show_calibration(cal: Calibration) -> None:
    typer.echo(f"calibration on {cal.checkpoint} (nbeta={cal.estimates[0].nbeta:.4g}):")
    typer.echo(
        f"  {'epsilon':>8s} {'gamma':>7s} {'llc':>9s} {'± se':>7s} {'half':>9s} {'accept':>6s} {'below':>5s}  flags"
    )
    for i, e in enumerate(cal.estimates):
        mark = "*" if i == cal.chosen else " "
        typer.echo(
            f"{mark} {e.epsilon:8.2g} {e.gamma:7.4g} {e.llc:9.3f} {e.llc_se:7.3f} {e.llc_half:9.3f} "
            f"{e.acceptance:6.3f} {e.frac_below_init:5.2f}  {', '.join(e.flags) or 'healthy'}"
        )


def _llc_settings(run: RunDir, items: list[str] | None) -> LLCSettings:
    """RUN's LLC settings (`load_settings`: defaults, then RUN/llc/settings.json) with the --set
    items over them; a bad item is named as --set, not as the settings file."""
    from toylens.config import apply_sets
    from toylens.llc import LLCSettings
    from toylens.llc.run import load_settings, validate_settings

    overrides = apply_sets({}, items or (), LLCSettings, section="llc")
    validate_settings(overrides, "--set")
    return load_settings(run, overrides)


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ToylensError(f"{option}: expected comma-separated numbers, got {text!r}") from None


def _metrics_line(row: dict) -> str:
    return "  ".join(f"{k}={v:.4f}" for k, v in row.items() if "/" in k and isinstance(v, (int, float)))


class _TqdmHandler(logging.Handler):
    """Log lines that do not break a running progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def main() -> None:
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("toylens")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    app()


if __name__ == "__main__":
    main()
