"""`toylens llc RUN` (estimate) and `toylens llc calibrate RUN`: the LLC of any restriction."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from toylens.cli.app import SET_VALUES, CheckpointOption, DeviceOption, llc_app, user_errors
from toylens.errors import ToylensError

if TYPE_CHECKING:
    from toylens.llc import Calibration, LLCSettings
    from toylens.rundir import RunDir

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


RestrictOption = typer.Option(
    None,
    "--restrict",
    help="Which weights to sample, the rest frozen (repeatable; default all, the whole model): heads (one "
    "per head, l0h0 ...), layers (l0.attn, l0.mlp ...), embed, unembed, all, one name (l1h2, l0.attn) or "
    "comma-separated parameter-name globs (blocks.0.attn.W_*); options after colons give its own nβ, γ and "
    "ε (heads:gamma=1000:nbeta=20). Each goes to RUN/llc/<restriction>/.",
)
DataRestrictOption = typer.Option(
    None,
    "--data-restrict",
    help="Data-restricted LLC: the sampled loss is taken on one subset of the targets only (induction: "
    "copied, uncopied; sort: output0, output1, ...; lm: punctuation, other); each restriction is stored "
    "as <restriction>@<subset> (all@copied for the whole model).",
)


@llc_app.command("estimate")
@user_errors
def llc_estimate(
    run: Path = typer.Argument(..., help="Run directory."),
    checkpoint: str = CheckpointOption("all"),
    set_: list[str] | None = LLCSetOption,
    device: str = DeviceOption,
    group: int = typer.Option(16, "--group", min=1, help="Checkpoints sampled together in one batched computation."),
    restrict: list[str] | None = RestrictOption,
    data_restrict: str | None = DataRestrictOption,
    redo: bool = typer.Option(
        False, "--redo", help="Delete RUN/llc/ (estimates, calibration, settings) first and estimate again."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Estimate the LLC of RUN's checkpoints (--checkpoint; all by default) for each restriction (the whole
    model by default) into RUN/llc/<restriction>/<checkpoint name>.json (+ traces); skips those done."""
    from toylens.llc import llc_over_checkpoints
    from toylens.rundir import as_rundir

    rundir = as_rundir(run)
    # --redo deletes RUN/llc/settings.json (a calibration's pick) first: the defaults and --set are the settings
    settings = _overrides(set_) if redo else _llc_settings(rundir, set_)
    results = llc_over_checkpoints(
        rundir,
        checkpoint,
        restrict=restrict or "all",
        data=data_restrict,
        settings=settings,
        device=device,
        group=group,
        redo=redo,
        progress=progress,
    )
    typer.echo(
        f"{'restriction':16s} {'checkpoint':14s} {'params':>8s} {'train_loss':>10s} {'llc':>9s} {'± se':>7s} "
        f"{'accept':>6s}  warnings"
    )
    for name, per_ckpt in results.items():
        for ckpt, r in per_ckpt.items():
            typer.echo(
                f"{name:16s} {ckpt:14s} {sum(r['params'].values()):8d} {r['train_loss']:10.4g} {r['llc']:9.3f} "
                f"{_num(r.get('llc_se')):7.3f} {_num(r.get('acceptance')):6.3f}  {', '.join(r['flags']) or '-'}"
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
    restrict: list[str] | None = RestrictOption,
    data_restrict: str | None = DataRestrictOption,
    write: bool = typer.Option(
        True,
        "--write/--no-write",
        help="Write the sweeps and picks into RUN/llc/calibration.json (the whole model's pick into "
        "RUN/llc/settings.json, the settings every estimate starts from).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Sweep epsilon x gamma on one checkpoint (--checkpoint) for each restriction (the whole model by default),
    show which settings give flat healthy traces, and save each restriction's pick; `toylens llc` then uses it."""
    from toylens.llc import calibrate
    from toylens.rundir import as_rundir

    rundir = as_rundir(run)
    cals = calibrate(
        rundir,
        checkpoint,
        restrict=restrict or "all",
        data=data_restrict,
        epsilons=_floats(epsilons, "--epsilons"),
        gammas=_floats(gammas, "--gammas"),
        settings=_llc_settings(rundir, set_),
        device=device,
        write=write,
        progress=progress,
    )
    for name, cal in cals.items():
        _show_calibration(name, cal)
    missing = [name for name, cal in cals.items() if cal.pick is None]
    where = f" -> {rundir.path / 'llc/calibration.json'}" if write else ""
    typer.echo(f"chosen for {len(cals) - len(missing)} of {len(cals)} restrictions{where}")
    if missing:
        typer.echo(
            f"no setting gave usable traces for {', '.join(missing)} (they keep the run's settings); "
            "try smaller epsilons or larger gammas",
            err=True,
        )
        raise typer.Exit(1)


def _show_calibration(name: str, cal: Calibration) -> None:
    typer.echo(f"{name}: calibration on {cal.checkpoint} (nbeta={cal.estimates[0].nbeta:.4g}):")
    typer.echo(
        f"  {'epsilon':>8s} {'gamma':>7s} {'llc':>9s} {'± se':>7s} {'half':>9s} {'accept':>6s} {'below':>5s}  flags"
    )
    for i, e in enumerate(cal.estimates):
        mark = "*" if i == cal.chosen else " "
        typer.echo(
            f"{mark} {e.epsilon:8.2g} {e.gamma:7.4g} {e.llc:9.3f} {e.llc_se:7.3f} {e.llc_half:9.3f} "
            f"{e.acceptance:6.3f} {e.frac_below_init:5.2f}  {', '.join(e.flags) or 'healthy'}"
        )
    if cal.pick is not None:
        typer.echo(f"  chosen: epsilon={cal.pick.epsilon:g} gamma={cal.pick.gamma:g}")


def _set_items(items: list[str] | None) -> dict[str, Any]:
    """The --set items as LLC settings overrides, checked on their own (a bad item is named as --set)."""
    from toylens.config import apply_sets
    from toylens.llc import LLCSettings
    from toylens.llc.store import validate_settings

    overrides = apply_sets({}, items or (), LLCSettings, section="llc")
    validate_settings(overrides, "--set")
    return overrides


def _overrides(items: list[str] | None) -> LLCSettings:
    """The defaults with the --set items over them."""
    from toylens.llc.store import validate_settings

    return validate_settings(_set_items(items), "--set")


def _llc_settings(run: RunDir, items: list[str] | None) -> LLCSettings:
    """RUN's LLC settings (`load_settings`: defaults, then RUN/llc/settings.json) with the --set items over them."""
    from toylens.llc import load_settings

    return load_settings(run, _set_items(items))


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ToylensError(f"{option}: expected comma-separated numbers, got {text!r}") from None


def _num(value: float | None) -> float:
    return float("nan") if value is None else value
