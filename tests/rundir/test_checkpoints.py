"""The checkpoint vocabulary (toylens.rundir.checkpoints): names, and every form of a spec resolved
against a tiny run with epoch and step checkpoints, finished and unfinished."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from conftest import sets, tiny_config

from toylens import load, train
from toylens.errors import ToylensError
from toylens.rundir import HELP, RunDir, epoch_name, items, resolve, resolve_one, state_file, step_name, weights_file


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunDir:
    cfg = tiny_config(train={"epochs": 2, "log_checkpoints": 3})  # 20 steps: extra checkpoints at steps 1 and 4
    return RunDir(train(cfg, tmp_path_factory.mktemp("runs"), progress=False).run_dir)


@pytest.fixture
def unfinished(run, tmp_path) -> RunDir:
    copy = RunDir(shutil.copytree(run.path, tmp_path / "unfinished"))
    copy.remove("summary.json")
    return copy


def names(run: RunDir, spec) -> list[str]:
    return [c.name for c in resolve(run, spec)]


def one_line_error(fn, *args) -> str:
    with pytest.raises(ToylensError) as e:
        fn(*args)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_names_and_files():
    assert epoch_name(3) == "epoch-0003" and step_name(120) == "step-000120"
    assert weights_file("epoch-0003") == "checkpoints/epoch-0003.safetensors"
    assert state_file("epoch-0003") == "checkpoints/epoch-0003.state.safetensors"


def test_every_form(run):
    every = ["epoch-0000", "step-000001", "step-000004", "epoch-0001", "epoch-0002"]
    assert names(run, "all") == every == [c.name for c in run.checkpoints()]
    assert names(run, "final") == ["epoch-0002"]  # the last epoch: final.safetensors holds the same weights
    assert names(run, "best") == [run.read_json("summary.json")["best"]["checkpoint"]]
    assert names(run, 1) == names(run, "1") == names(run, "epoch-0001") == ["epoch-0001"]
    assert names(run, "step-000004") == ["step-000004"]
    in_order = ["epoch-0002", "epoch-0000", "step-000001"]
    assert names(run, "2, 0,step-000001") == names(run, [2, "0", "step-000001"]) == in_order
    assert names(run, "final,2,epoch-0002") == ["epoch-0002"]  # each checkpoint once


def test_final_is_the_final_weights(run):
    final, standalone = load(run.path, "final"), load(run.path / "final.safetensors")
    assert (final.epoch, final.step) == (standalone.epoch, standalone.step) == (2, 20)
    for name, weight in final.model.state_dict().items():
        assert torch.equal(weight, standalone.model.state_dict()[name]), name


def test_single_checkpoint_forms(run):
    assert resolve_one(run, "final").name == "epoch-0002" and resolve_one(run, "0").file == weights_file("epoch-0000")
    assert resolve_one(run, [1]).name == "epoch-0001"  # a list of one is one checkpoint
    for spec in ("all", "0,1", [0, 1]):
        msg = one_line_error(resolve_one, run, spec, "export")
        assert "export takes one checkpoint" in msg and "available: epoch-0000" in msg


def test_bad_items_name_the_item_and_what_is_available(run, unfinished):
    msg = one_line_error(resolve, run, "1,9")
    assert "no checkpoint 'epoch-0009' (from '9')" in msg
    assert "available: epoch-0000, step-000001, step-000004, epoch-0001, epoch-0002; final = epoch-0002, best = " in msg
    assert "no checkpoint 'epoch-3'" in one_line_error(resolve, run, "epoch-3")
    for spec in ("", "1,,2", " ", [], "all,1", [True]):
        one_line_error(items, spec)
    msg = one_line_error(resolve, unfinished, "final")
    assert "no final checkpoint, training has not finished" in msg
    assert "(final and best once training has finished)" in msg
    assert "no best checkpoint" in one_line_error(resolve, unfinished, "best")
    assert names(unfinished, "all") == names(run, "all") and names(unfinished, 2) == ["epoch-0002"]


def test_help_names_every_form():
    for form in ("final", "best", "epoch number", "epoch-0003", "step-000120", "all", "3,5"):
        assert form in HELP


# --------------------------------------------------------------------- one --checkpoint on every command

FAST_LLC = [*sets(chains=1, draws=2, burnin=1, batch_size=8, init_batches=1), "--no-progress"]
COMMANDS = {  # command -> (arguments after RUN, does it take several checkpoints?)
    "analyze": (["--only", "weight_norms", "--examples", "4", "--no-progress"], True),
    "llc": (FAST_LLC, True),
    "llc calibrate": (["--epsilons", "1e-4", "--gammas", "100", "--no-write", *FAST_LLC], False),
    "export": (["--to", "transformer-lens"], False),
    "report": (["--no-png"], False),
}
SINGLE = {"final": "epoch-0002", "1": "epoch-0001", "epoch-0001": "epoch-0001", "step-000004": "step-000004"}
SEVERAL = {
    "all": ["epoch-0000", "step-000001", "step-000004", "epoch-0001", "epoch-0002"],
    "0,final": ["epoch-0000", "epoch-0002"],
    "epoch-0000,step-000001": ["epoch-0000", "step-000001"],
}


def invoke(toylens_main, command: str, run: RunDir, spec: str, tmp_path):
    extra, _ = COMMANDS[command]
    out = ["-o", tmp_path / "report.html"] if command == "report" else []
    return toylens_main(*command.split(), run.path, "--checkpoint", spec, *extra, *out)


def chosen(command: str, run: RunDir, result, tmp_path) -> list[str]:
    """Which checkpoints the command acted on, read from what it wrote or printed."""
    if command == "llc calibrate":
        return [result.stdout.split("calibration on ")[1].split()[0]]
    if command == "report":
        text = (tmp_path / "report.html").read_text()
        return [text.split("<tr><td>analysed checkpoint</td><td>")[1].split(" (step")[0]]
    if command == "llc":
        return [line.split()[1] for line in result.stdout.splitlines()[1:]]  # restriction, checkpoint, ...
    folder = "analysis" if command == "analyze" else "export/transformer-lens"
    return [
        c.name
        for c in run.checkpoints()
        if run.has(f"{folder}/{c.name}/weight_norms.json") or run.has(f"{folder}/{c.name}.safetensors")
    ]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_takes_the_same_checkpoint_forms(command, run, tmp_path, toylens_main):
    """analyze, llc, llc calibrate, export and report: one --checkpoint, the same forms meaning the
    same checkpoints; all and lists where a command takes several, a one-line refusal elsewhere."""
    fresh = RunDir(shutil.copytree(run.path, tmp_path / "run"))
    if command == "report":  # the report shows analysed checkpoints
        assert toylens_main("analyze", fresh.path, "--checkpoint", "all", *COMMANDS["analyze"][0]).exit_code == 0
    several = COMMANDS[command][1]
    best = run.read_json("summary.json")["best"]["checkpoint"]
    for spec, expected in [*SINGLE.items(), ("best", best), *SEVERAL.items()]:
        expected = expected if isinstance(expected, list) else [expected]
        if command in ("analyze", "export"):  # these tell what they did by the files they wrote
            shutil.rmtree(fresh.path / "analysis", ignore_errors=True)
            shutil.rmtree(fresh.path / "export", ignore_errors=True)
            fresh.path.joinpath("manifest.json").write_text(run.path.joinpath("manifest.json").read_text())
        result = invoke(toylens_main, command, fresh, spec, tmp_path)
        if len(expected) > 1 and not several:
            assert result.exit_code == 2 and result.stderr.count("\n") == 1, (command, spec, result.stderr)
            assert f"{command} takes one checkpoint" in result.stderr
            continue
        assert result.exit_code in (0, 1), (command, spec, result.stderr)  # calibrate: 1 when no setting is usable
        got = chosen(command, fresh, result, tmp_path)
        assert (sorted(got) if command in ("analyze", "export") else got) == (
            sorted(expected) if command in ("analyze", "export") else expected
        ), (command, spec)


def test_a_bad_checkpoint_is_the_same_one_line_error_everywhere(run, tmp_path, toylens_main):
    for bad in ("epoch-0099", "1,,2", "9"):
        lines = {command: invoke(toylens_main, command, run, bad, tmp_path) for command in COMMANDS}
        assert all(r.exit_code == 2 and r.stderr.count("\n") == 1 for r in lines.values()), (bad, lines)
        assert len({r.stderr for r in lines.values()}) == 1, (bad, {c: r.stderr for c, r in lines.items()})
    assert "no checkpoint 'epoch-0009' (from '9'); available: epoch-0000" in lines["export"].stderr


def test_help_text_is_the_same_on_every_command(toylens_main):
    one_line = " ".join(HELP.split())
    for command in COMMANDS:
        text = toylens_main(*("llc estimate" if command == "llc" else command).split(), "--help").stdout
        assert one_line in " ".join(text.replace("\n", " ").split()), command


def test_listed_steps_and_windows_join_the_schedule(tmp_path):
    """train.checkpoint_steps: steps and linear windows become step-NNNNNN checkpoints beside the
    epoch and log-spaced ones (20 steps: epochs end at 0, 10, 20; log-spaced at 1 and 4)."""
    window = {"start": 5, "stop": 12, "every": 4}  # 5, 9 (13 is past stop)
    cfg = tiny_config(train={"epochs": 2, "log_checkpoints": 3, "checkpoint_steps": [3, window, 10, 4]})
    run = RunDir(train(cfg, tmp_path, progress=False).run_dir)
    steps = ["epoch-0000", "step-000001", "step-000003", "step-000004", "step-000005", "step-000009"]
    assert names(run, "all") == [*steps, "epoch-0001", "epoch-0002"]  # step 10 is epoch 1's end, once
    w9 = load(run.path, "step-000009").model.state_dict()
    assert not all(torch.equal(w9[k], v) for k, v in load(run.path, "step-000005").model.state_dict().items())


def test_a_schedule_step_past_the_end_stops_before_any_file(tmp_path, toylens_main):
    cfg = tiny_config(train={"epochs": 2, "checkpoint_steps": [{"start": 15, "stop": 40, "every": 25}]})
    with pytest.raises(ToylensError, match=r"train.checkpoint_steps: step 40 is past the run's last step \(20\)"):
        train(cfg, tmp_path, progress=False)
    assert not (tmp_path / cfg.name).exists()
    path = tmp_path / "bad.yaml"
    raw = cfg.model_dump(mode="json")
    raw["train"]["checkpoint_steps"] = [{"start": 9, "stop": 3, "every": 1}]
    path.write_text(yaml.safe_dump(raw))
    result = toylens_main("train", str(path), "--out", str(tmp_path), "--no-progress")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "train.checkpoint_steps.0" in result.stderr and "stop (3) is before start (9)" in result.stderr
