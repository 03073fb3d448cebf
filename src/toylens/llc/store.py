"""The files under RUN/llc/: one layout for every estimate, whole model or any restriction.

The whole model is the restriction `all`; every estimate, of any restriction at any checkpoint,
is stored the same way, and a report or the development stage reads them back the same way:

    settings.json                         the run's LLC settings (LLCSettings): written when the
                                          whole model (`all`) is calibrated, read by every estimate
    calibration.json                      {"format", "restrictions": {name: {"checkpoint", "grid":
                                          [summary + "epsilon", "gamma", "usable"], "chosen": index
                                          into grid or null}}}: every calibration sweep and its pick
    calibration.safetensors               the sweeps' traces, "<restriction>.<loss|accept>.<i>"
    <restriction>/<checkpoint>.json       one estimate, e.g. all/epoch-0003.json, l0h1/epoch-0003.json,
                                          all@copied/epoch-0003.json (a data restriction after @):
                                          "checkpoint", "epoch", "step", "restriction", "data",
                                          "params" ({parameter: weights sampled}), "llc" (λ̂, mean over
                                          chains), "llc_std", "llc_se", "llc_chains", "llc_half",
                                          "rel_change", "converged", "init_loss", "train_loss",
                                          "nbeta", "epsilon", "gamma", "acceptance", "frac_below_init",
                                          "drift", "warnings", "flags", "settings", "wall_s"
    <restriction>/<checkpoint>.safetensors  "loss" [chains, steps]: the minibatch objective at every
                                          SGLD step, burn-in included; "accept" [chains, checks]: the
                                          MALA acceptance every mala_every steps

Every file goes through `RunDir` (atomic, checksummed in the run's manifest). An estimate's traces
are written before its summary, so an interrupted run leaves no summary without traces. A run
directory holding the layout of an earlier toylens (llc/<checkpoint>.json, llc/restricted/) is
refused with one line that says how to estimate again (`toylens llc RUN --redo`); nothing reads
it as if it were this layout.
"""

from __future__ import annotations

from typing import Any

from toylens.errors import ToylensError
from toylens.llc.diagnostics import LLCEstimate
from toylens.llc.settings import LLCSettings
from toylens.rundir import CheckpointInfo, RunDir

FORMAT = "toylens-llc/2"
FOLDER = "llc"
SETTINGS = f"{FOLDER}/settings.json"
CALIBRATION = f"{FOLDER}/calibration.json"
CALIBRATION_TRACES = f"{FOLDER}/calibration.safetensors"
WHOLE = "all"
"""The restriction that samples every weight: the whole model's LLC."""


def estimate_file(restriction: str, checkpoint: str, suffix: str = ".json") -> str:
    return f"{FOLDER}/{restriction}/{checkpoint}{suffix}"


def check_layout(run: RunDir) -> None:
    """Refuse (one line) a run whose RUN/llc/ was written in an earlier layout."""
    for rel in run.listed(FOLDER):
        parts = rel.split("/")
        old = parts[1] == "restricted" or (len(parts) == 2 and rel not in (SETTINGS, CALIBRATION, CALIBRATION_TRACES))
        if rel == CALIBRATION and (run.path / rel).is_file():
            old = run.read_json(rel).get("format") != FORMAT
        if old and (run.path / rel).exists():
            raise ToylensError(
                f"{run.path / rel}: LLC results in the layout of an earlier toylens; this one keeps every "
                f"estimate as llc/<restriction>/<checkpoint>.json: estimate them again with "
                f"`toylens llc {run.path} --redo` (it deletes {run.path / FOLDER} first)"
            )


def clear(run: RunDir) -> None:
    """Delete every file under RUN/llc/ (estimates, calibration, settings) and its manifest entries."""
    for rel in run.listed(FOLDER):
        run.remove(rel)


def validate_settings(raw: dict[str, Any], where: str) -> LLCSettings:
    from toylens.config import validate_input

    return validate_input(LLCSettings, raw, where)


def load_settings(run: RunDir, overrides: dict[str, Any] | None = None) -> LLCSettings:
    """Defaults, then RUN/llc/settings.json (from calibrating the whole model) if present, then `overrides`."""
    raw: dict[str, Any] = run.read_json(SETTINGS) if run.has(SETTINGS) else {}
    raw.update(overrides or {})
    return validate_settings(raw, str(run.path / SETTINGS))


def read_done(run: RunDir, restriction: str, checkpoint: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """The stored estimate of `restriction` at `checkpoint` if it was made with the settings `key`."""
    rel = estimate_file(restriction, checkpoint)
    done = run.read_json(rel) if run.has(rel) else None
    return done if done is not None and done.get("settings") == key else None


def write_estimate(run: RunDir, ckpt: CheckpointInfo, est: LLCEstimate, extra: dict[str, Any]) -> dict[str, Any]:
    """An estimate's traces, then its summary (with `extra`: restriction, data, params); returns the summary."""
    restriction = extra["restriction"]
    summary = {"format": FORMAT, "checkpoint": ckpt.name, "epoch": ckpt.epoch, "step": ckpt.step, **extra}
    summary.update(est.summary())
    meta = {"format": FORMAT, "checkpoint": ckpt.name, "restriction": restriction}
    run.write_tensors(estimate_file(restriction, ckpt.name, ".safetensors"), est.traces(), meta)
    run.write_json(estimate_file(restriction, ckpt.name), summary)
    return summary


def read_estimates(run: RunDir, restriction: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every stored estimate: {restriction: [summary per checkpoint, in training order]} (only
    `restriction`'s with one given; restrictions without estimates are left out)."""
    check_layout(run)
    names = sorted({rel.split("/")[1] for rel in run.listed(FOLDER) if rel.count("/") == 2})
    if restriction is not None:
        names = [n for n in names if n == restriction]
    ckpts = run.checkpoints()
    found = {
        name: [run.read_json(estimate_file(name, c.name)) for c in ckpts if run.has(estimate_file(name, c.name))]
        for name in names
    }
    return {name: rows for name, rows in found.items() if rows}


def read_traces(run: RunDir, restriction: str, checkpoint: str) -> dict[str, Any] | None:
    """The traces ("loss", "accept") of one stored estimate, or None."""
    rel = estimate_file(restriction, checkpoint, ".safetensors")
    return run.read_tensors(rel)[0] if run.has(rel) else None


def read_calibrations(run: RunDir) -> dict[str, dict[str, Any]]:
    """{restriction: its stored calibration sweep and pick} (empty before any calibration)."""
    check_layout(run)
    return dict(run.read_json(CALIBRATION)["restrictions"]) if run.has(CALIBRATION) else {}


def calibrated_pick(stored: dict[str, Any]) -> dict[str, float] | None:
    """The (ε, γ) a stored calibration chose, or None when no setting of its grid was usable."""
    chosen = stored.get("chosen")
    return None if chosen is None else {k: stored["grid"][chosen][k] for k in ("epsilon", "gamma")}
