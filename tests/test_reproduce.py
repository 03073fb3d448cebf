"""`toylens reproduce`: studies are data, steps are skipped when done, an interrupted study
resumes, the analyze and llc steps write what the report shows, and the shipped studies validate."""

from __future__ import annotations

import copy
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY

from toylens.errors import ToylensError
from toylens.rundir import RunDir, resolve_one

rp = importlib.import_module("toylens.reproduce")  # the module: the attribute toylens.reproduce is the function

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write_study(tmp_path: Path, **fields) -> Path:
    """A two-run study of tiny sorting models (1-layer MLP vs 2-layer attention-only)."""
    (tmp_path / "cfg").mkdir(exist_ok=True)
    a, b = copy.deepcopy(TINY), copy.deepcopy(TINY)
    a["name"], b["name"] = "tiny-a", "tiny-b"
    b["model"].update(n_layers=2, attn_only=True)
    (tmp_path / "cfg" / "a.yaml").write_text(yaml.safe_dump(a))
    (tmp_path / "cfg" / "b.yaml").write_text(yaml.safe_dump(b))
    study = {
        "name": "tiny-study",
        "title": "Tiny",
        "runs": ["cfg/a.yaml", {"config": "cfg/b.yaml", "set": ["seed=3"]}],
        "quick": {"set": ["train.epochs=1"]},
        "full": {"set": ["train.epochs=2"]},
        "steps": ["train", "report"],
        **fields,
    }  # the orchestration; analyze + llc have their own test
    path = tmp_path / "tiny-study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def manifests(runs: list[Path]) -> list[str]:
    return [(r / "manifest.json").read_text() for r in runs]


def test_reproduce_trains_reports_and_skips_what_is_done(tmp_path):
    study = write_study(tmp_path)
    first = rp.reproduce(study, size="quick", out=tmp_path / "out", progress=False, png=False)
    assert first.folder == tmp_path / "out" / "tiny-study-quick"
    assert [r.name for r in first.runs] == ["tiny-a", "tiny-b"]
    assert RunDir(first.runs[0]).read_json("summary.json")["epochs"] == 1  # the quick override
    assert RunDir(first.runs[1]).config().seed == 3 and RunDir(first.runs[1]).config().model.n_layers == 2
    assert first.report == first.folder / "report.html" and first.report.stat().st_size > 10_000
    before = manifests(first.runs)
    again = rp.reproduce(study, size="quick", out=tmp_path / "out", progress=False, png=False)
    assert manifests(again.runs) == before  # nothing retrained or rewritten


def test_quick_and_full_never_share_runs(tmp_path):
    study = write_study(tmp_path)
    full = rp.reproduce(study, size="full", out=tmp_path / "out", progress=False, png=False)
    assert full.folder == tmp_path / "out" / "tiny-study"
    assert RunDir(full.runs[0]).read_json("summary.json")["epochs"] == 2


def test_interrupted_study_resumes(tmp_path, monkeypatch):
    study = write_study(tmp_path)
    real_train = rp.STEPS["train"]
    calls = []

    def interrupt_second(ctx, cfg):
        calls.append(cfg.name)
        if cfg.name == "tiny-b":
            raise KeyboardInterrupt
        return real_train(ctx, cfg)

    monkeypatch.setitem(rp.STEPS, "train", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        rp.reproduce(study, size="quick", out=tmp_path / "out", progress=False, png=False)
    folder = tmp_path / "out" / "tiny-study-quick"
    assert RunDir(folder / "tiny-a").has("summary.json") and not (folder / "report.html").exists()
    done_a = manifests([folder / "tiny-a"])
    monkeypatch.setitem(rp.STEPS, "train", real_train)
    result = rp.reproduce(study, size="quick", out=tmp_path / "out", progress=False, png=False)
    assert manifests([folder / "tiny-a"]) == done_a and RunDir(folder / "tiny-b").has("summary.json")
    assert result.report.is_file()


@pytest.mark.slow
def test_analyze_and_llc_steps_feed_the_report(tmp_path):
    study = write_study(
        tmp_path,
        steps=["train", "analyze", "llc", "report"],
        quick={
            "set": ["train.epochs=1"],
            "analyze": {
                "checkpoint": "final",
                "only": ["head_scores", "attention", "patching"],
                "settings": {"n_examples": 32, "n_patch": 4, "n_repeated": 8},
            },
            "llc": {
                "checkpoint": "final",
                "chains": 2,
                "draws": 20,
                "burnin": 10,
                "calibrate": {"epsilons": [0.0001, 0.0003], "gammas": [100.0]},
            },
        },
    )
    result = rp.reproduce(study, size="quick", out=tmp_path / "out", progress=False, png=False)
    for run in map(RunDir, result.runs):  # "final" is stored under its name: epoch-0001
        names = run.manifest()["files"]
        assert any(n.startswith("analysis/epoch-0001/head_scores/") for n in names)
        assert any(n.startswith("analysis/epoch-0001/patching/") for n in names)
        assert run.has("llc/calibration.json") and run.has("llc/all/epoch-0001.json")
    html = result.report.read_text()
    for section in ('id="sec-attention"', 'id="sec-patching"', 'id="sec-llc"'):
        assert section in html


def test_changed_study_config_is_refused_not_mixed(tmp_path):
    study = write_study(tmp_path)
    rp.reproduce(study, size="quick", out=tmp_path / "out", progress=False, png=False)
    raw = yaml.safe_load(study.read_text())
    raw["quick"]["set"].append("train.lr=0.01")
    study.write_text(yaml.safe_dump(raw))
    with pytest.raises(ToylensError, match="config differs.*train.lr"):
        rp.reproduce(study, size="quick", out=tmp_path / "out", progress=False, png=False)


def test_size_placeholder_picks_the_config_of_each_size(tmp_path):
    study = write_study(tmp_path, runs=["cfg/{size}.yaml"])
    for size, epochs in (("quick", 1), ("full", 3)):
        raw = copy.deepcopy(TINY)
        raw["name"], raw["train"]["epochs"] = f"tiny-{size}", epochs
        (tmp_path / "cfg" / f"{size}.yaml").write_text(yaml.safe_dump(raw))
    spec, path = rp.load_study(study)
    assert [c.name for c in rp.run_configs(spec, path, "quick")] == ["tiny-quick"]
    assert [c.name for c in rp.run_configs(spec, path, "full")] == ["tiny-full"]


def test_bad_studies(tmp_path):
    with pytest.raises(ToylensError, match="unknown.*sorting-weight-decay"):
        rp.load_study("no-such-study")
    bad = write_study(tmp_path, stepz=["train"])
    with pytest.raises(ToylensError, match="stepz: unknown key"):
        rp.load_study(bad)
    bad = write_study(tmp_path, steps=["train", "fly"])
    with pytest.raises(ToylensError, match="steps.1"):
        rp.load_study(bad)
    dup = write_study(tmp_path, runs=["cfg/a.yaml", "cfg/a.yaml"])
    study, path = rp.load_study(dup)
    with pytest.raises(ToylensError, match="share a name"):
        rp.run_configs(study, path, "quick")


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONFIGS / "studies").glob("*.yaml")))
def test_shipped_studies_validate(name):
    study, path = rp.load_study(name)
    assert study.name == name and path == CONFIGS / "studies" / f"{name}.yaml"
    for size in ("quick", "full", "smoke"):
        configs = rp.run_configs(study, path, size)
        assert len(configs) == len(study.runs)


def test_sorting_study_is_the_three_decay_levels():
    study, path = rp.load_study("sorting-weight-decay")
    configs = rp.run_configs(study, path, "quick")
    assert [c.train.weight_decay for c in configs] == [0.0, 0.1, 1.0]
    assert all(c.train.l1.coef > 0 for c in configs)
    assert study.steps == ["train", "analyze", "llc", "report"]


def test_cli_reproduce(tmp_path):
    study = write_study(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "toylens.cli",
            "reproduce",
            str(study),
            "--quick",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
            "--no-png",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"report: {tmp_path / 'out' / 'tiny-study-quick' / 'report.html'}"
    assert "[1/" in proc.stderr and "train tiny-a" in proc.stderr
    bad = subprocess.run([sys.executable, "-m", "toylens.cli", "reproduce", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown" in bad.stderr


def test_smoke_size_is_quick_with_the_smoke_section_on_top(tmp_path, toylens_main):
    """The same runs, calls and settings keys as --quick; smoke's values win; its own folder."""
    study = write_study(
        tmp_path,
        quick={
            "set": ["train.epochs=3", "task.n_train=300"],
            "analyze": [
                {"checkpoint": "all", "only": ["head_scores"]},
                {"checkpoint": "final", "settings": {"n_examples": 64, "ablate_neurons": False}},
            ],
            "llc": {
                "checkpoint": [0, 3],
                "chains": 2,
                "draws": 40,
                "calibrate": {"epsilons": [0.001], "gammas": [100.0]},
            },
        },
        smoke={
            "set": ["train.epochs=1"],
            "analyze_settings": {"n_examples": 8},  # the old spelling, merged all the same
            "llc": {"checkpoint": [0, 1], "draws": 4, "calibrate": {"epsilons": [0.01]}},
        },
    )
    spec, path = rp.load_study(study)
    opts = rp.size_options(spec, path, "smoke")
    assert opts.analyze == [
        {"checkpoint": "all", "only": ["head_scores"], "settings": {"n_examples": 8}},
        {"checkpoint": "final", "settings": {"n_examples": 8, "ablate_neurons": False}},
    ]
    assert opts.llc == {
        "checkpoint": [0, 1],
        "chains": 2,
        "draws": 4,
        "calibrate": {"epsilons": [0.01], "gammas": [100.0]},
    }
    configs = rp.run_configs(spec, path, "smoke")
    assert [(c.train.epochs, c.task.n_train) for c in configs] == [(1, 300), (1, 300)]
    result = rp.reproduce(study, size="smoke", out=tmp_path / "out", progress=False, png=False)
    assert result.folder == tmp_path / "out" / "tiny-study-smoke"
    with pytest.raises(ToylensError, match="no smoke size"):
        rp.reproduce(write_study(tmp_path), size="smoke", out=tmp_path / "out")
    with pytest.raises(ToylensError, match="smoke.analyze_settings.*n_pairs"):
        rp.load_study(write_study(tmp_path, smoke={"analyze_settings": {"n_pairs": 2}}))
    both = toylens_main("reproduce", study, "--smoke", "--full", "--out", tmp_path / "out")
    assert both.exit_code == 2 and "cannot be combined with --full" in both.stderr


SHIPPED_STUDIES = sorted(p.stem for p in (CONFIGS / "studies").glob("*.yaml"))


@pytest.mark.slow
def test_every_shipped_study_runs_at_its_smoke_size(tmp_path, toylens_main, no_network, session_home, monkeypatch):
    """Each shipped study end to end through the `toylens` entry point with no network: the same
    runs, steps and calls as --quick on a few examples (its smoke: section). The PNG copies of the
    figures are drawn for one study (about 50 figures, 13 s of a 2-core CPU per study; the four
    draw the same kinds of figure)."""
    monkeypatch.setenv("HOME", str(session_home))
    for name in SHIPPED_STUDIES:
        png = "--png" if name == "imdb-attention" else "--no-png"
        result = toylens_main("reproduce", name, "--smoke", "--out", tmp_path, "--no-progress", png)
        assert result.exit_code == 0, f"{name}:\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr
        folder = tmp_path / f"{name}-smoke"
        assert result.stdout.strip().splitlines()[-1] == f"report: {folder / 'report.html'}"
        assert (folder / "report.html").stat().st_size > 10_000
        study, path = rp.load_study(name)
        opts = rp.size_options(study, path, "smoke")
        for cfg in rp.run_configs(study, path, "smoke"):
            run = RunDir(folder / cfg.name)
            files = run.manifest()["files"]
            assert run.has("summary.json"), f"{name}/{cfg.name}: not trained"
            final = f"analysis/{resolve_one(run, 'final').name}/"  # analyze's "final" stores results under its name
            assert any(f.startswith(final + "patching/") for f in files), f"{name}/{cfg.name}: no patching"
            assert any(f.startswith(final + "head_scores/") for f in files), f"{name}/{cfg.name}: no head scores"
            assert run.has("analysis/trajectory.json")
            estimates = [f for f in files if f.startswith("llc/all/") and f.endswith(".json")]  # the refined: below
            wanted = opts.llc.get("checkpoint", "all")
            expected = len(run.checkpoints()) if wanted == "all" else len(wanted)
            assert len(estimates) == expected, f"{name}/{cfg.name}: LLC of {estimates}, expected {expected}"
            if "development" in study.steps:
                assert run.has("development/stages.json") and run.has("development/essential_dynamics.json")
            if opts.llc.get("restrict"):  # the induction study: the refined LLC of every head
                assert run.has(f"llc/l0h0/{resolve_one(run, 0).name}.json")
                if opts.llc["restrict"].get("calibrate") is not None:  # a pick per head, used
                    picks = run.read_json("llc/calibration.json")["restrictions"]
                    assert "l0h0" in picks and len(picks["l0h0"]["grid"]) == len(
                        opts.llc["restrict"]["calibrate"]["epsilons"]
                    )
        assert (folder / "report_figures").is_dir() == (png == "--png")
        html = (folder / "report.html").read_text()
        for section in ('id="sec-attention"', 'id="sec-patching"', 'id="sec-llc"'):
            assert section in html, f"{name}: report without {section}"
        assert ('id="sec-development"' in html) == ("development" in study.steps), name


@pytest.mark.parametrize(
    "quick, message",
    [
        (
            {"analyze": {"checkpoint": "final", "settings": {"n_exampels": 8}}},
            "quick.analyze.settings.n_exampels: unknown key (did you mean 'n_examples'?)",
        ),
        (
            {"analyze": [{"checkpoint": "all"}, {"checkpoint": "final", "settings": {"ablate_neurons": 0}}]},
            "quick.analyze.1.settings.ablate_neurons: expected bool (got 0)",
        ),
        ({"analyze": {"checkpoints": "all"}}, "quick.analyze.checkpoints: unknown key (did you mean 'checkpoint'?)"),
        (
            {"llc": {"calibrate": {"epsilon": [1e-4]}}},
            "quick.llc.calibrate.epsilon: unknown key (did you mean 'epsilons'?)",
        ),
        ({"llc": {"chains": "2"}}, "quick.llc: chains: Input should be a valid integer (got '2')"),
        ({"llc": {"checkpoint": "1,,2"}}, "quick.llc.checkpoint '1,,2': empty item"),
        (
            {"analyze": [{"checkpoint": "all,3"}]},
            "quick.analyze.0.checkpoint 'all,3': all already names every checkpoint",
        ),
        ({"llc": {"checkpoint": "all", "checkpoints": "all"}}, "quick.llc: checkpoints: unknown key"),
        (
            {"llc": {"restrict": "heads"}},
            "quick.llc.restrict: expected a list of restrictions such as [heads], or",
        ),
        ({"llc": {"restrict": {"specs": ["heads"], "drawz": 5}}}, "quick.llc.restrict: drawz"),
        ({"llc": {"restrict": {"specs": ["heads"], "checkpoint": "1,,2"}}}, "quick.llc.restrict.checkpoint '1,,2'"),
        (
            {"llc": {"restrict": {"specs": ["heads"], "calibrate": {"epsilon": [1e-4]}}}},
            "quick.llc.restrict.calibrate.epsilon: unknown key (did you mean 'epsilons'?)",
        ),
        ({"development": {"n_probes": 8}}, "quick.development.n_probes: unknown key (did you mean 'n_probe'?)"),
        ({"development": {"bandwidth": "wide"}}, "quick.development.bandwidth: expected float (got 'wide')"),
    ],
)
def test_step_options_are_checked_before_anything_runs(tmp_path, quick, message):
    """A wrong analysis or LLC option stops the study at once, not after training."""
    study = write_study(tmp_path, quick=quick, steps=["train", "analyze", "llc", "report"])
    with pytest.raises(ToylensError) as err:
        rp.reproduce(study, size="quick", out=tmp_path / "out", progress=False, png=False)
    assert message in str(err.value)
    assert not (tmp_path / "out").exists()
