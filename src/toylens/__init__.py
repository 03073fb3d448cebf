"""toylens: train small transformers from scratch and open them up.

    import toylens
    result = toylens.train("configs/sort-no-decay.yaml", out="runs")
    run = toylens.load(result.run_dir)              # .model, .config, .task
    toylens.report([result.run_dir], "report.html")  # self-contained HTML report from saved results
    logits, cache = run.model.run_with_cache(run.task.splits["test"].batch(torch.arange(8)).tokens)
"""

from toylens.config import RunConfig, load_config
from toylens.errors import ToylensError
from toylens.model import Transformer
from toylens.report import ReportResult, report
from toylens.run import Loaded, RunDir, load
from toylens.train import TrainResult, train
from toylens.version import __version__

__all__ = ["Loaded", "ReportResult", "RunConfig", "RunDir", "ToylensError", "TrainResult", "Transformer", "load",
           "load_config", "report", "train"]
