"""One command per reference study: train -> analyze -> llc -> development -> report, resumable.

    toylens reproduce sorting-weight-decay --quick      # minutes on a laptop CPU
    toylens reproduce induction-heads --full --device cuda
    toylens reproduce wikitext --smoke                  # seconds: every step on a few examples (CI)
    toylens reproduce my-study.yaml                     # a study of your own

A study is data: a YAML file in `configs/studies/` listing its run configs (paths relative to the
study file), the pipeline steps, and the overrides of its `quick` and `full` sizes (config `--set`
overrides for every run, keyword arguments for the analysis, LLC and development steps). The orchestration
here is generic: each step is skipped when its results exist, so a rerun after an interruption
continues where it stopped (training resumes from its last epoch checkpoint). Runs go to
`OUT/<study>/<run>` (`OUT/<study>-quick/<run>` for --quick, `-smoke` for --smoke, so the sizes
never mix) and the comparison report to `OUT/<study>[-quick|-smoke]/report.html`. A study file is
validated like a run config (unknown keys, wrong types, a missing name: one line naming the field)
before any step runs.

The `smoke` size is the quick size made tiny, for CI: a study's optional `smoke:` section is
layered on top of `quick` (its `set` after quick's, its analysis settings merged into every
analysis call of quick, its LLC options merged over quick's), so a smoke run goes through the
same runs, steps, calls and settings keys as --quick on a few examples and steps. Its results
mean nothing; it shows that every step runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from toylens.config import SHIPPED, RunConfig, Section, load_config, read_yaml, shipped, suggest, validate_input
from toylens.errors import ToylensError

log = logging.getLogger("toylens")

StepName = Literal["train", "analyze", "llc", "development", "report"]
Size = Literal["quick", "full", "smoke"]
STUDIES_DIR = "studies"


class StudyRun(Section):
    """One run of a study."""

    config: str
    """Run config (YAML), relative to the study file; "{size}" stands for quick or full, for configs
    shipped in two sizes (e.g. ../wikitext-1l-attn-lm.{size}.yaml); the smoke size uses quick's."""
    set: list[str] = []
    """Overrides for this run only, as with `toylens train --set`."""


class StudySize(Section):
    """What a size (quick or full) changes."""

    set: list[str] = []
    """Config overrides applied to every run, e.g. [train.epochs=4]."""
    analyze: dict[str, Any] | list[dict[str, Any]] = {}
    """Keyword arguments of the analysis step, or a list of them for several calls (e.g. head scores
    of every checkpoint, then everything of the final one)."""
    llc: dict[str, Any] = {}
    """The LLC step: "checkpoint" (which checkpoints, as `toylens llc --checkpoint`: all (the
    default), final, [0, 1, 2], ...), "calibrate" (keyword
    arguments of the sampler calibration such as epsilons and gammas, or false to use the settings
    as given), "restrict" (also the refined LLC of each restriction, as `toylens llc --restrict`: a
    list such as [heads], over the same checkpoints with the same settings, or a mapping {specs:
    [heads], checkpoint: ..., calibrate: {epsilons, gammas} (a sweep and pick per restriction on
    the final checkpoint, once, as `toylens llc calibrate --restrict`), and LLC settings that differ
    from the whole model's}), and any LLC setting (chains, draws, burnin, ...)."""
    development: dict[str, Any] = {}
    """The development step (`toylens development`): n_probe, seed, bandwidth."""


class SmokeSize(Section):
    """What the smoke size changes on top of the quick size: the same runs, steps and calls on a
    few examples and steps, so that CI sees every step of the study run."""

    set: list[str] = []
    """Config overrides applied to every run after the quick size's (a key set in both takes this value)."""
    analyze_settings: dict[str, Any] = {}
    """Fields of toylens.analysis.Settings (n_examples, n_patch, n_repeated, ...) merged into the
    settings of every analysis call of the quick size."""
    llc: dict[str, Any] = {}
    """LLC options merged over the quick size's: settings (draws, init_batches, ...), "checkpoint"
    (when quick names epochs a smoke run does not reach) and "calibrate" (merged key by key)."""

    @field_validator("analyze_settings")
    @classmethod
    def _known_settings(cls, settings: dict[str, Any]) -> dict[str, Any]:
        import dataclasses

        from toylens.analysis.driver import Settings

        known = [f.name for f in dataclasses.fields(Settings)]
        unknown = [k for k in settings if k not in known]
        if unknown:
            raise ValueError(f"unknown analysis setting {unknown[0]!r} (settings: {', '.join(known)})")
        return settings


class Study(Section):
    """A reproducible study: its runs, its steps, two sizes and a smoke test of the quick one."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Study name; results go to OUT/<name> (OUT/<name>-quick, OUT/<name>-smoke for those sizes)."""
    title: str = ""
    """Report title."""
    description: str = ""
    """What the study shows (printed at the start)."""
    runs: list[StudyRun] = Field(min_length=1)
    """The runs, each a config file (and optional overrides)."""
    steps: list[StepName] = ["train", "analyze", "llc", "report"]
    """Pipeline steps, in order."""
    quick: StudySize = StudySize()
    """Overrides of the quick size (minutes on a CPU)."""
    full: StudySize = StudySize()
    """Overrides of the full size (the study as published)."""
    smoke: SmokeSize | None = None
    """The smoke size: the quick size cut to a few examples and steps (CI). None: no smoke size."""

    @field_validator("runs", mode="before")
    @classmethod
    def _plain_paths(cls, runs: Any) -> Any:
        return [{"config": r} if isinstance(r, str) else r for r in runs] if isinstance(runs, list) else runs


@dataclass
class StudyResult:
    study: str
    folder: Path
    report: Path | None
    runs: list[Path]
    wall_s: float = 0.0


# ------------------------------------------------------------------------------ study files


def studies_dirs() -> list[Path]:
    """Where study names are looked up: ./configs/studies, then the package's own (`SHIPPED`)."""
    return list(dict.fromkeys([Path.cwd() / "configs" / STUDIES_DIR, SHIPPED / STUDIES_DIR]))


def known_studies() -> list[str]:
    return sorted({p.stem for d in studies_dirs() if d.is_dir() for p in d.glob("*.yaml")})


def find_study(name_or_path: str | Path) -> Path:
    """A study name (configs/studies/<name>.yaml) or a path to a study YAML file."""
    path = shipped(Path(name_or_path))
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ToylensError(f"{path}: study file not found")
        return path
    for folder in studies_dirs():
        if (folder / f"{name_or_path}.yaml").is_file():
            return folder / f"{name_or_path}.yaml"
    known = ", ".join(known_studies())
    raise ToylensError(f"study {str(name_or_path)!r}: unknown (known studies: {known}; or give a study YAML file)")


def load_study(name_or_path: str | Path) -> tuple[Study, Path]:
    path = find_study(name_or_path)
    raw = read_yaml(path, "study", "a mapping (name, runs, steps, quick, full)")
    return validate_input(Study, raw, str(path)), path


def size_options(study: Study, path: Path, size: Size) -> StudySize:
    """What a size changes; for smoke, the quick size with the smoke section layered on top."""
    if size != "smoke":
        return getattr(study, size)
    if study.smoke is None:
        raise ToylensError(f"{path}: study {study.name!r} has no smoke size (add a smoke: section)")
    quick, smoke = study.quick, study.smoke
    calls = quick.analyze if isinstance(quick.analyze, list) else [quick.analyze]
    analyze = [
        {**call, "settings": {**call.get("settings", {}), **smoke.analyze_settings}} if smoke.analyze_settings else call
        for call in calls
    ]
    llc = {**quick.llc, **smoke.llc}
    if isinstance(quick.llc.get("calibrate"), dict) and isinstance(smoke.llc.get("calibrate"), dict):
        llc["calibrate"] = {**quick.llc["calibrate"], **smoke.llc["calibrate"]}
    return StudySize(set=[*quick.set, *smoke.set], analyze=analyze, llc=llc, development=quick.development)


def run_configs(study: Study, path: Path, size: Size) -> list[RunConfig]:
    """Every run's config of this size, with the size's and the run's overrides applied, validated
    (smoke runs use the quick configs)."""
    opts = size_options(study, path, size)
    files = "quick" if size == "smoke" else size
    configs = [load_config(path.parent / r.config.replace("{size}", files), [*opts.set, *r.set]) for r in study.runs]
    names = [c.name for c in configs]
    if len(set(names)) < len(names):
        raise ToylensError(f"{path}: two runs share a name ({', '.join(names)}); runs need distinct names")
    return configs


# ------------------------------------------------------------------------------------- steps


@dataclass
class Context:
    """What every step sees."""

    study: Study
    size: StudySize
    folder: Path
    device: str
    progress: bool


def step_train(ctx: Context, cfg: RunConfig) -> str:
    from toylens.rundir import RunDir
    from toylens.train import train

    finished = RunDir(ctx.folder / cfg.name).has("summary.json")
    # Called even when finished: train() refuses a run directory whose saved config differs.
    train(cfg, ctx.folder, resume=True, device=ctx.device, progress=ctx.progress)
    return "done before" if finished else "trained"


def step_analyze(ctx: Context, cfg: RunConfig) -> str:
    """`analyze` with the size's options (e.g. checkpoint: all); it skips finished results itself."""
    from toylens.analysis.driver import Settings, analyze

    calls = ctx.size.analyze if isinstance(ctx.size.analyze, list) else [ctx.size.analyze]
    written = []
    for call in calls:
        options = dict(call)
        settings = options.pop("settings", None)
        written += analyze(
            ctx.folder / cfg.name,
            device=ctx.device,
            progress=ctx.progress,
            settings=Settings(**settings) if settings else None,
            **options,
        )
    return f"{len(written)} results written" if written else "done before"


def step_llc(ctx: Context, cfg: RunConfig) -> str:
    """Calibrate the sampler for this run (once), then the LLC of the chosen checkpoints (done ones
    skipped); with `restrict`, the same for each restriction."""
    from toylens.llc import calibrate, llc_over_checkpoints, load_settings, read_calibrations
    from toylens.rundir import RunDir

    run = RunDir(ctx.folder / cfg.name)
    options = dict(ctx.size.llc)
    checkpoint = options.pop("checkpoint", "all")
    calibration = options.pop("calibrate", {})
    restrict = options.pop("restrict", None)
    common: dict[str, Any] = {"device": ctx.device, "progress": ctx.progress}
    if calibration is not False and "all" not in read_calibrations(run):
        calibrate(run, settings=load_settings(run, options), **common, **calibration)
    results = llc_over_checkpoints(run, checkpoint, settings=load_settings(run, options), **common)["all"]
    warned = sum(bool(r.get("warnings")) for r in results.values())
    status = f"{len(results)} checkpoints" + (f", {warned} with diagnostic warnings (see the report)" if warned else "")
    if restrict:
        own = dict(restrict) if isinstance(restrict, dict) else {"specs": restrict}
        specs, where = own.pop("specs"), own.pop("checkpoint", checkpoint)
        per_restriction = own.pop("calibrate", None)
        settings = load_settings(run, {**options, **own})
        if per_restriction is not None and not set(read_calibrations(run)) - {"all"}:
            calibrate(run, "final", restrict=specs, settings=settings, **common, **per_restriction)
        refined = llc_over_checkpoints(run, where, restrict=specs, settings=settings, **common)
        status += f"; refined LLC of {len(refined)} restrictions"
    return status


def step_development(ctx: Context, cfg: RunConfig) -> str:
    """Essential dynamics over every checkpoint, then the stage boundaries of the loss and LLC curves."""
    from toylens.development import development

    _, stages = development(ctx.folder / cfg.name, device=ctx.device, **ctx.size.development)
    return f"{len(stages.boundaries)} stage boundaries"


ANALYZE_OPTIONS = ("checkpoint", "only", "settings")
CALIBRATE_OPTIONS = ("epsilons", "gammas")
DEVELOPMENT_OPTIONS = {"n_probe": int, "seed": int, "bandwidth": float}


def check_step_options(opts: StudySize, where: str) -> None:
    """The options of the analysis and LLC steps, checked before any step runs (a wrong key would
    otherwise surface only after training, as a TypeError)."""
    import dataclasses

    from toylens.analysis.driver import Settings
    from toylens.llc.store import validate_settings
    from toylens.rundir import ALL, FINAL, items

    calls = opts.analyze if isinstance(opts.analyze, list) else [opts.analyze]
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    for i, call in enumerate(calls):
        at = f"{where}.analyze" + (f".{i}" if isinstance(opts.analyze, list) else "")
        _known_keys(call, ANALYZE_OPTIONS, at)
        items(call.get("checkpoint", FINAL), f"{at}.checkpoint")
        settings = call.get("settings", {})
        if not isinstance(settings, dict):
            raise ToylensError(f"{at}.settings: expected a mapping of analysis settings (got {settings!r})")
        _known_keys(settings, tuple(fields), f"{at}.settings")
        for key, value in settings.items():
            kind = type(fields[key].default)
            if fields[key].default is not None and (
                type(value) is not kind and not (kind is float and type(value) is int)
            ):
                raise ToylensError(f"{at}.settings.{key}: expected {kind.__name__} (got {value!r})")
    llc = dict(opts.llc)
    items(llc.pop("checkpoint", ALL), f"{where}.llc.checkpoint")
    calibration = llc.pop("calibrate", {})
    if calibration is not False:
        if not isinstance(calibration, dict):
            raise ToylensError(f"{where}.llc.calibrate: expected false or a mapping of {', '.join(CALIBRATE_OPTIONS)}")
        _known_keys(calibration, CALIBRATE_OPTIONS, f"{where}.llc.calibrate")
    restrict = llc.pop("restrict", [])
    own = dict(restrict) if isinstance(restrict, dict) else {"specs": restrict}
    specs = own.pop("specs", None)
    if not isinstance(specs, list) or not all(isinstance(r, str) for r in specs):
        raise ToylensError(
            f"{where}.llc.restrict: expected a list of restrictions such as [heads], or a mapping with specs: "
            f"[heads] (got {restrict!r})"
        )
    items(own.pop("checkpoint", ALL), f"{where}.llc.restrict.checkpoint")
    per_restriction = own.pop("calibrate", {})
    if not isinstance(per_restriction, dict):
        raise ToylensError(f"{where}.llc.restrict.calibrate: expected a mapping of {', '.join(CALIBRATE_OPTIONS)}")
    _known_keys(per_restriction, CALIBRATE_OPTIONS, f"{where}.llc.restrict.calibrate")
    validate_settings(llc, f"{where}.llc")
    validate_settings({**llc, **own}, f"{where}.llc.restrict")
    _known_keys(opts.development, tuple(DEVELOPMENT_OPTIONS), f"{where}.development")
    for key, value in opts.development.items():
        kind = DEVELOPMENT_OPTIONS[key]
        if type(value) is not kind and not (kind is float and type(value) is int):
            raise ToylensError(f"{where}.development.{key}: expected {kind.__name__} (got {value!r})")


def _known_keys(options: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = [k for k in options if k not in known]
    if unknown:
        raise ToylensError(f"{where}.{unknown[0]}: unknown key{suggest(unknown[0], known)} (keys: {', '.join(known)})")


STEPS: dict[str, Callable[[Context, RunConfig], str]] = {
    "train": step_train,
    "analyze": step_analyze,
    "llc": step_llc,
    "development": step_development,
}


# ------------------------------------------------------------------------------ orchestration


def reproduce(
    study: str | Path,
    *,
    size: Size = "full",
    device: str = "auto",
    out: str | Path = "runs",
    progress: bool = True,
    png: bool = True,
) -> StudyResult:
    """Run every step of a study (skipping what is done) and write its comparison report."""
    spec, path = load_study(study)
    opts = size_options(spec, path, size)
    check_step_options(opts, f"{path}: {size}")
    configs = run_configs(spec, path, size)
    folder = Path(out) / (spec.name + ("" if size == "full" else f"-{size}"))
    ctx = Context(spec, opts, folder, device, progress)
    start = time.perf_counter()
    log.info("%s (%s): %s", spec.name, size, spec.description.strip() or spec.title)
    per_run = [s for s in spec.steps if s != "report"]
    total = len(per_run) * len(configs) + ("report" in spec.steps)
    done = 0
    for step in per_run:
        for cfg in configs:
            done += 1
            t0 = time.perf_counter()
            log.info("[%d/%d] %s %s ...", done, total, step, cfg.name)
            status = STEPS[step](ctx, cfg)
            log.info("[%d/%d] %s %s: %s (%.1fs)", done, total, step, cfg.name, status, time.perf_counter() - t0)
    runs = [folder / c.name for c in configs]
    report_path = None
    if "report" in spec.steps:
        from toylens.report import report

        log.info("[%d/%d] report ...", total, total)
        report_path = report(runs, folder / "report.html", title=spec.title or spec.name, png=png).path
    return StudyResult(spec.name, folder, report_path, runs, time.perf_counter() - start)
