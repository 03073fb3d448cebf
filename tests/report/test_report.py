"""The HTML report: self-contained, sections follow the available results, runs of different
architectures compare, PNGs written, a 3-run sorting report stays small, bad input is refused."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from report_runs import SORT_STUDY, make_run

import toylens
from toylens.errors import ToylensError
from toylens.report.collect import collect
from toylens.report.figures import round_sig, to_json
from toylens.report.html import script_json

EXTERNAL = re.compile(
    r"""(?:src|href|action|poster|data)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//|@import""",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    return {
        "mlp": make_run(out, "mlp", train={"epochs": 2, "log_checkpoints": 3}),
        "wd": make_run(out, "wd", train={"epochs": 2, "weight_decay": 0.5}),
        "attn2": make_run(
            out, "attn2", model={"n_layers": 2, "attn_only": True, "normalization": "LN"}, train={"epochs": 1}
        ),
    }


def figure_data(page: str) -> dict:
    block = re.search(r'<script id="toylens-data" type="application/json">(.*?)</script>', page, re.S)
    return json.loads(block.group(1))["figures"]


def section_ids(page: str) -> list[str]:
    return re.findall(r'<section id="sec-([a-z0-9-]+)"', page)


def test_report_is_self_contained(runs, tmp_path):
    result = toylens.report([runs["mlp"], runs["wd"]], tmp_path / "r.html", png=False)
    page = result.path.read_text()
    assert not EXTERNAL.search(page), EXTERNAL.search(page).group(0)
    # Only the inline script and the inline data: no <script src>, <link>, <img> or <iframe>.
    assert re.findall(r"<script[^>]*>", page) == ['<script id="toylens-data" type="application/json">', "<script>"]
    assert not re.search(r"<(link|img|iframe|object|embed)\b", page)
    assert "default-src 'none'" in page  # the page itself forbids any load
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # the SVG namespace is a name, not a load
    assert "https://" not in page


def test_sections_and_data_of_two_runs(runs, tmp_path):
    result = toylens.report([runs["mlp"], runs["wd"]], tmp_path / "r.html", png=False)
    page = result.path.read_text()
    assert section_ids(page) == result.sections == ["summary", "training", "weights", "configs"]
    figures = figure_data(page)
    loss = figures["train-loss"]
    assert [s["name"] for s in loss["series"]] == ["mlp test", "mlp train", "wd test", "wd train"]
    metrics = collect(runs["wd"]).metrics
    assert loss["series"][2]["y"] == [round_sig(r["test/loss"]) for r in metrics]
    assert loss["series"][2]["x"] == [r["step"] for r in metrics]
    # Weight norms over every checkpoint, log-spaced step checkpoints included, in step order.
    total = figures["weights-total"]["series"][0]
    steps = [c.step for c in toylens.RunDir(runs["mlp"]).checkpoints()]
    assert total["x"] == steps == sorted(steps) and len(steps) > 3  # epochs 0..2 and log-spaced step checkpoints
    # The summary marks the differing setting and shows both values.
    row = re.search(r'<tr class="diff"><td>train.weight_decay \*</td><td>([^<]*)</td><td>([^<]*)</td>', page)
    assert row and row.groups() == ("0", "0.5")


def test_weight_norms_match_the_checkpoint(runs):
    from toylens.rundir import RunDir

    run = collect(runs["wd"])
    tensors, _ = RunDir(runs["wd"]).read_tensors("checkpoints/epoch-0002.safetensors")
    expected = sum(float((t.double() ** 2).sum()) for t in tensors.values()) ** 0.5
    final = [c for c in run.weight_norms if c.name == "epoch-0002"][0]
    assert final.total == pytest.approx(expected, rel=1e-12)
    assert final.norms["blocks.0.attn.W_Q"] == pytest.approx(float(tensors["blocks.0.attn.W_Q"].double().norm()))


def test_different_architectures_render(runs, tmp_path):
    result = toylens.report([runs["mlp"], runs["attn2"]], tmp_path / "r.html", png=False)
    figures = figure_data(result.path.read_text())
    # The MLP matrices exist only in the MLP run; the attention-only run is not given a fake line.
    assert [s["name"] for s in figures["weights-W_in"]["series"]] == ["mlp"]
    assert [s["name"] for s in figures["weights-W_Q"]["series"]] == ["mlp", "attn2"]
    page = result.path.read_text()
    assert "2L attn-only, 2 heads, d_model 16, LN" in page and "1L MLP 32, 2 heads, d_model 16" in page


def test_runs_of_different_tasks_compare(runs, tmp_path):
    induction = make_run(
        tmp_path / "runs",
        "induction-2l",
        task={"name": "induction", "n_vocab": 8, "seq_len": 16, "segment_len": [2, 5], "n_train": 128, "n_test": 32},
        model={"n_layers": 2, "attn_only": True},
        train={"epochs": 1},
    )
    result = toylens.report([runs["mlp"], induction], tmp_path / "r.html", png=False)
    page = result.path.read_text()
    figures = figure_data(page)
    # Each metric is drawn for the runs that log it: copy accuracy only for the induction run.
    assert {s["name"] for s in figures["train-copy_acc"]["series"]} == {"induction-2l test"}
    assert {s["name"].split()[0] for s in figures["train-loss"]["series"]} == {"mlp", "induction-2l"}
    assert "<td>task</td><td>sort</td><td>induction</td>" in page
    # The task's own fields differ, and a field one task lacks shows as a dash, not an error.
    row = re.search(r'<tr class="diff"><td>task.list_len \*</td><td>([^<]*)</td><td>([^<]*)</td>', page)
    assert row and row.groups() == ("4", "—")


def test_pngs_written_beside_the_report(runs, tmp_path):
    result = toylens.report([runs["mlp"]], tmp_path / "one.html")
    folder = tmp_path / "one_figures"
    assert result.pngs and all(p.parent == folder for p in result.pngs)
    assert {p.name for p in result.pngs} >= {"train-loss.png", "weights-total.png", "weights-W_Q.png"}
    for p in result.pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5_000
    none = toylens.report([runs["mlp"]], tmp_path / "nopng.html", png=False)
    assert none.pngs == [] and not (tmp_path / "nopng_figures").exists()


def test_three_run_sorting_report_under_10_mb(tmp_path):
    out = tmp_path / "runs"
    paths = [
        make_run(out, f"sort-{level}", SORT_STUDY, train={"weight_decay": wd})
        for level, wd in (("no", 0.0), ("mid", 0.1), ("high", 1.0))
    ]
    result = toylens.report(paths, tmp_path / "sort.html", png=False)
    size = result.path.stat().st_size
    assert size < 10 * 2**20, f"{size / 2**20:.1f} MB"
    assert len(figure_data(result.path.read_text())["weights-total"]["series"][0]["x"]) == 13


def test_script_json_cannot_close_the_script():
    text = script_json({"token": "</script><!-- & -->"})
    assert "</" not in text and "<!--" not in text and json.loads(text) == {"token": "</script><!-- & -->"}


def test_rounding_keeps_four_significant_digits():
    assert to_json({"a": [0.000123456, 123456.7, float("nan")], "b": 3}) == {"a": [0.0001235, 123500.0, None], "b": 3}


def test_tampered_run_is_refused(runs, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(runs["wd"], copy)
    with open(copy / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 9}\n')
    with pytest.raises(ToylensError, match="metrics.jsonl"):
        toylens.report([copy], tmp_path / "r.html")


def test_bad_arguments(runs, tmp_path):
    with pytest.raises(ToylensError, match="not found"):
        toylens.report([tmp_path / "nope"], tmp_path / "r.html")
    with pytest.raises(ToylensError, match="HTML"):
        toylens.report([runs["wd"]], tmp_path / "r.pdf")
    with pytest.raises(ToylensError, match="twice"):
        toylens.report([runs["wd"], runs["wd"]], tmp_path / "r.html")


def test_cli_report(runs, tmp_path):
    out = tmp_path / "cli.html"
    proc = subprocess.run(
        [sys.executable, "-m", "toylens.cli", "report", str(runs["mlp"]), str(runs["wd"]), "-o", str(out), "--no-png"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"report: {out}" and out.stat().st_size > 10_000
    bad = subprocess.run(
        [sys.executable, "-m", "toylens.cli", "report", str(tmp_path / "missing")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "not found" in bad.stderr


def test_unfinished_run_renders_with_what_it_has(tmp_path, monkeypatch):
    from toylens.train import loop

    real_save = loop.save_checkpoint

    def stop_after_epoch_1(run, name, *args, **kwargs):
        real_save(run, name, *args, **kwargs)
        if name == "epoch-0001":
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", stop_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        make_run(tmp_path / "runs", "cut", train={"epochs": 3})
    result = toylens.report([tmp_path / "runs" / "cut"], tmp_path / "r.html", png=False)
    page = result.path.read_text()
    assert "<td>status</td><td>training (1 of 3 epochs)</td>" in page
    assert "<td>training wall time (s)</td><td>—</td>" in page
    assert figure_data(page)["weights-total"]["series"][0]["x"] == [0, 10]
