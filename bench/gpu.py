"""The GPU check: one command that tests and benchmarks toylens on a device, in under 8 minutes.

    bench/gpu.sh                                  # = python -m bench.gpu --device cuda
    python -m bench.gpu --device cuda --out gpu-check
    python -m bench.gpu --device cpu --smoke      # the same pipeline with tiny sizes (CI, about a minute)

Parts, each a child process with its own time limit (a failure or timeout is recorded and the
next part runs):

  tests     the device-sensitive tests (`pytest -m device`) with TOYLENS_TEST_DEVICE=<device>
  ensemble  bench/ensemble.py: 32 sorting models as one vectorised ensemble vs one after another
  train     bench/train.py: toylens's training step vs a TransformerLens loop (toylens alone
            when transformer-lens is missing)
  patching  bench/patching.py: batched patching vs TransformerLens's get_act_patch_* (likewise)
  llc       trains configs/sort-no-decay.yaml (13 checkpoints), then bench/llc.py on all of them
            (toylens alone when devinterp is missing)
  fulltext  bench/fulltext.py: tokens/s and peak memory of configs/wikitext-1l-attn-lm.full.yaml
  speedpaths bench/speedpaths.py: the fused AdamW, bf16 and compile paths on that model: tokens/s
            with and without each, and their agreement with the plain run's losses
  refined   trains configs/induction-2l.yaml, then bench/llc_restricted.py: the refined LLC of its 8
            heads at every epoch checkpoint in one batched computation (toylens alone: devinterp
            2.x is not carried to the device)

Writes gpu.json (environment, and per part: command, status, seconds, figures, output tail) and
gpu.md (the same as a table) to $OUT when set, else to --out. Exit status 0 when every part that
ran passed (a part skipped for a missing package counts as passed), else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 450  # all parts together: under 8 minutes with the start-up and the environment


@dataclass
class Part:
    """One step of the check and what came of it."""

    name: str
    cmd: list[str]
    timeout_s: int
    status: str = "pending"  # ok, failed, timeout, skipped
    seconds: float = 0.0
    figures: dict = field(default_factory=dict)
    note: str = ""
    tail: str = ""


def environment(device: str) -> dict:
    """Python, torch, CUDA, driver and GPU as torch reports them, and the optional packages."""
    import torch

    env: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu_threads": torch.get_num_threads(),
        "device": device,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        driver = getattr(torch._C, "_cuda_getDriverVersion", None)  # an int such as 13000 (CUDA 13.0)
        env.update(
            gpu=props.name,
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            driver_cuda=_driver(driver() if driver else None),
            cudnn=torch.backends.cudnn.version(),
        )
    for pkg in ("numpy", "pydantic", "beartype", "jaxtyping", "transformer-lens", "devinterp"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            env[pkg] = None
    return env


def _driver(code: int | None) -> str | None:
    """The CUDA version the driver supports, from torch's integer (13000 -> '13.0')."""
    return None if not code else f"{code // 1000}.{code % 1000 // 10}"


def plan(device: str, smoke: bool, work: Path) -> list[Part]:
    """The parts and their sizes: GPU sizes that fit the budget on one H200, or tiny ones."""
    py = sys.executable
    run_dir = work / "runs" / "sort-no-decay"
    ind_dir = work / "runs" / "induction-2l"
    ind_train = [py, "-m", "toylens.cli", "train", str(ROOT / "configs/induction-2l.yaml")]
    ind_train += ["--out", str(work / "runs"), "--device", device, "--no-progress", "--overwrite"]
    sort_train = [py, "-m", "toylens.cli", "train", str(ROOT / "configs/sort-no-decay.yaml")]
    sort_train += ["--out", str(work / "runs"), "--device", device, "--no-progress", "--overwrite"]
    small_text = ["--set", "task.source=bundled", "--set", "task.subset=wikitext-103-v1"]
    small_text += ["--set", "task.max_examples=150", "--set", "train.batch_size=2", "--set", "task.n_ctx=32"]
    if smoke:
        tests = ["tests/model/test_stacked.py"]
        sizes = {
            "ensemble": ["--members", "2", "--steps", "2", "--repeats", "1"],
            "train": ["--steps", "3", "--repeats", "1"],
            "patching": ["--arch", "sort", "--batch", "4", "--repeats", "1"],
            "llc": ["--chains", "2", "--draws", "4", "--burnin", "2", "--batch-size", "32", "--mala-every", "2"],
            "fulltext": ["--steps", "2", *small_text],
            # compile left out: tracing adds ~6 s (tests/train/test_compiled.py covers it on the device)
            "speedpaths": [str(ROOT / "configs/sort-no-decay.yaml"), "--steps", "2", "--only", "fused,bf16"],
            "refined": ["--chains", "2", "--draws", "4", "--burnin", "2", "--init-batches", "1", "--mala-every", "2"],
        }
        sort_train += ["--set", "task.n_train=512", "--set", "task.n_test=64", "--set", "train.epochs=2"]
        ind_train += ["--set", "task.n_train=64", "--set", "task.n_test=32", "--set", "train.epochs=2"]
        ind_train += ["--set", "train.log_checkpoints=0"]
        limits = {"tests": 120, "ensemble": 120, "train": 120, "patching": 120, "llc": 180, "fulltext": 120}
        limits["speedpaths"] = 120
        limits["refined"] = 120
    else:
        tests = []
        sizes = {
            "ensemble": ["--members", "32", "--steps", "50", "--repeats", "3"],
            "train": ["--steps", "200", "--repeats", "3"],
            "patching": ["--arch", "induction", "--batch", "64", "--repeats", "3"],
            "llc": [],  # the run's settings: 13 checkpoints of the study-2 model
            "fulltext": ["--steps", "100"],
            "speedpaths": ["--steps", "50"],  # inductor compiles in the warm-up steps
            "refined": [],  # the quick study's per-head settings: 2 chains x 100 draws, batch 16
        }
        ind_train += ["--set", "train.log_checkpoints=0"]  # 11 epoch checkpoints
        # tests: 240 s, since tests/train/test_compiled.py compiles two graphs with inductor on the GPU
        limits = {"tests": 240, "ensemble": 60, "train": 60, "patching": 60, "llc": 120, "fulltext": 60}
        limits["speedpaths"] = 150
        limits["refined"] = 90
    dev = ["--device", device]
    llc = [py, str(ROOT / "bench/llc.py"), str(run_dir), "--checkpoint", "all", *dev, *sizes["llc"]]
    refined = [py, str(ROOT / "bench/llc_restricted.py"), str(ind_dir), "--checkpoint", "all", "--no-devinterp"]
    refined += [*dev, *sizes["refined"]]
    return [
        Part("tests", [py, "-m", "pytest", "-m", "device", "-q", "-p", "no:cacheprovider", *tests], limits["tests"]),
        Part("ensemble", [py, str(ROOT / "bench/ensemble.py"), *dev, *sizes["ensemble"]], limits["ensemble"]),
        Part("train", [py, str(ROOT / "bench/train.py"), *dev, *sizes["train"]], limits["train"]),
        Part("patching", [py, str(ROOT / "bench/patching.py"), *dev, *sizes["patching"]], limits["patching"]),
        Part("llc", [*sort_train, "&&", *llc], limits["llc"]),
        Part("fulltext", [py, str(ROOT / "bench/fulltext.py"), *dev, *sizes["fulltext"]], limits["fulltext"]),
        Part("speedpaths", [py, str(ROOT / "bench/speedpaths.py"), *dev, *sizes["speedpaths"]], limits["speedpaths"]),
        Part("refined", [*ind_train, "&&", *refined], limits["refined"]),
    ]


def run_part(part: Part, env: dict, timeout: float) -> None:
    """Run the part's command(s) (`&&` chains two) in ROOT; record status, time, output tail."""
    start = time.perf_counter()
    out, commands = [], _split(part.cmd)
    part.status = "ok"
    for cmd in commands:
        left = timeout - (time.perf_counter() - start)
        if left <= 0:
            part.status = "timeout"
            break
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired as e:
            out.append(_text(e.stdout) + _text(e.stderr))
            part.status, part.note = "timeout", f"stopped after {timeout:.0f} s"
            break
        out.append(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            part.status, part.note = "failed", f"exit {proc.returncode}: {' '.join(cmd[1:3])}"
            break
    part.seconds = round(time.perf_counter() - start, 1)
    text = "".join(out)
    part.tail = text[-3000:]
    part.figures = FIGURES[part.name](text)
    skipped = [m.group(1) for m in re.finditer(r"skipped \((.+)\)\s*$", text, re.M)]
    if skipped and part.status == "ok":
        part.note = "; ".join(sorted(set(skipped)))


def _split(cmd: list[str]) -> list[list[str]]:
    chains: list[list[str]] = [[]]
    for arg in cmd:
        if arg == "&&":
            chains.append([])
        else:
            chains[-1].append(arg)
    return chains


def _text(b: bytes | str | None) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else b or ""


def _num(pattern: str, text: str) -> float | None:
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None


def _tests(text: str) -> dict:
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", text)}
    return counts


def _ensemble(text: str) -> dict:
    return {
        "sequential_tok_s": _num(r"one after another:\s+([\d.]+) tokens/s", text),
        "ensemble_tok_s": _num(r"ensemble:\s+([\d.]+) tokens/s", text),
        "ratio": _num(r"ratio \(ensemble / one after another\): ([\d.]+)x", text),
    }


def _train(text: str) -> dict:
    return {
        "toylens_tok_s": _num(r"toylens:\s+([\d.]+) tokens/s", text),
        "transformer_lens_tok_s": _num(r"TransformerLens:\s+([\d.]+) tokens/s", text),
        "ratio": _num(r"ratio \(toylens / TransformerLens\): ([\d.]+)x", text),
    }


def _patching(text: str) -> dict:
    out: dict = {}
    for grid in ("resid_pre", "head_out_by_pos"):
        line = next((ln for ln in text.splitlines() if ln.startswith(grid)), "")
        out[f"{grid}_toylens_s"] = _num(r"toylens\s+([\d.]+) s", line)
        out[f"{grid}_transformer_lens_s"] = _num(r"TransformerLens\s+([\d.]+) s", line)
        out[f"{grid}_ratio"] = _num(r"ratio\s+([\d.]+)x", line)
        out[f"{grid}_max_diff"] = _num(r"max \|diff\| ([\d.e+-]+)", line)
    return out


def _llc(text: str) -> dict:
    return {
        "checkpoints": _num(r"; (\d+) checkpoint\(s\)", text),
        "toylens_s": _num(r"wall time: toylens ([\d.]+)s", text),
        "devinterp_s": _num(r"devinterp ([\d.]+)s, ratio", text),
        "ratio": _num(r"wall time: .* ratio ([\d.]+)x", text),
        "agree": (m.group(1) if (m := re.search(r"standard errors: (\d+/\d+)", text)) else None),
    }


def _fulltext(text: str) -> dict:
    line = next((ln for ln in reversed(text.splitlines()) if ln.startswith("{")), "")
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return {}


def _speedpaths(text: str) -> dict:
    """bench/speedpaths.py's JSON line, flattened: plain_tok_s, and per path its tok_s, speedup,
    loss_rel and first_rel (e.g. bf16_speedup)."""
    line = next((ln for ln in reversed(text.splitlines()) if ln.startswith("{")), "")
    try:
        result = json.loads(line)
    except json.JSONDecodeError:
        return {}
    return {f"{path}_{k}": v for path, figs in result.items() if isinstance(figs, dict) for k, v in figs.items()}


def _refined(text: str) -> dict:
    m = re.search(r"; (\d+) checkpoint\(s\) x (\d+) restriction\(s\)", text)
    return {
        "checkpoints": int(m.group(1)) if m else None,
        "restrictions": int(m.group(2)) if m else None,
        "toylens_s": _num(r"wall time: toylens ([\d.]+)s", text),
    }


FIGURES = {
    "tests": _tests,
    "ensemble": _ensemble,
    "train": _train,
    "patching": _patching,
    "llc": _llc,
    "fulltext": _fulltext,
    "speedpaths": _speedpaths,
    "refined": _refined,
}


def markdown(env: dict, parts: list[Part], args: argparse.Namespace) -> str:
    head = f"# toylens GPU check ({'smoke, ' if args.smoke else ''}device {args.device})\n\n"
    keys = ("gpu", "gpu_memory_gib", "driver_cuda", "torch", "cuda_build", "python", "transformer-lens", "devinterp")
    head += " | ".join(f"{k}: {env.get(k)}" for k in keys if k in env) + "\n\n"
    rows = ["| part | status | seconds | figures | note |", "|---|---|---|---|---|"]
    for p in parts:
        figs = ", ".join(f"{k}={v}" for k, v in p.figures.items() if v is not None and k != "overrides")
        rows.append(f"| {p.name} | {p.status} | {p.seconds} | {figs} | {p.note} |")
    return head + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (with --smoke: CI)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: the pipeline in about a minute")
    ap.add_argument("--out", default="gpu-check", help="where gpu.json and gpu.md go when $OUT is not set")
    ap.add_argument("--only", default=None, help="comma-separated parts to run (default: all)")
    args = ap.parse_args(argv)
    out = Path(os.environ.get("OUT") or args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(args.device)
    print(json.dumps(env, indent=1), flush=True)
    if args.device.startswith("cuda") and not env["cuda_available"]:
        print(f"error: --device {args.device}, but torch {env['torch']} sees no CUDA device", file=sys.stderr)
        return 2
    child_env = {**os.environ, "TOYLENS_TEST_DEVICE": args.device, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH")) if p
    )
    parts: list[Part] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="toylens-gpu-") as tmp:
        child_env.setdefault("XDG_CACHE_HOME", str(Path(tmp) / "cache"))  # the token cache: written, then dropped
        parts = plan(args.device, args.smoke, Path(tmp))
        only = set(args.only.split(",")) if args.only else None
        for part in parts:
            left = BUDGET_S - (time.perf_counter() - start)
            if only is not None and part.name not in only:
                part.status, part.note = "skipped", "not in --only"
            elif left < 10 and not args.smoke:
                part.status, part.note = "skipped", "the check's time budget was spent"
            else:
                run_part(part, child_env, min(part.timeout_s, left) if not args.smoke else part.timeout_s)
            print(f"{part.name:9s} {part.status:8s} {part.seconds:6.1f} s  {part.figures}  {part.note}", flush=True)
    report = {
        "device": args.device,
        "smoke": args.smoke,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "seconds": round(time.perf_counter() - start, 1),
        "environment": env,
        "parts": [asdict(p) for p in parts],
    }
    (out / "gpu.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu.md").write_text(markdown(env, parts, args))
    print(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'} ({report['seconds']} s)")
    return 0 if all(p.status in ("ok", "skipped") for p in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
