"""Where things are in a run directory: the one place its file names are spelled.

    runs/<name>/
      config.yaml                               the resolved config
      metrics.jsonl                             one line per evaluation (epoch 0 = at initialisation)
      checkpoints/epoch-0003.safetensors        weights + JSON metadata (config, epoch, step)
      checkpoints/epoch-0003.state.safetensors  optimizer + RNG state, for --resume
      checkpoints/step-000120.safetensors       extra weight-only checkpoints at chosen steps
      final.safetensors                         the final checkpoint's weights as one standalone file
      summary.json                              final and best metrics
      task/vocab.json                           what the task fitted to its data, if anything
      manifest.json                             SHA-256 and size of every file, and the checkpoint list
      .lock                                     held by the process writing into the run
      analysis/, llc/, development/, export/    what the later stages write (each stage's own folder)

A checkpoint is named `epoch-0003` (after epoch 3; `epoch-0000` is the initialisation) or
`step-000120` (an extra at optimisation step 120); `CheckpointInfo` is one as the manifest
registers it. What a user's `--checkpoint` spec means is `rundir.checkpoints`.
"""

from __future__ import annotations

from dataclasses import dataclass

MANIFEST = "manifest.json"
RUN_FORMAT = "toylens-run/1"
"""The manifest's format; a manifest.json of another format is not a toylens run directory."""
TASK_FOLDER = "task"
FINAL_WEIGHTS = "final.safetensors"
"""The final weights as one standalone file (the same weights as the final checkpoint)."""
SUMMARY = "summary.json"
"""Written when training finishes: final and best metrics (a run without it is unfinished)."""


@dataclass(frozen=True)
class CheckpointInfo:
    """A registered checkpoint: its name, the epoch and step it was written at, and whether it
    has the optimizer state that --resume needs."""

    name: str
    epoch: int
    step: int
    resumable: bool

    @property
    def file(self) -> str:
        return weights_file(self.name)


def epoch_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}"


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def weights_file(name: str) -> str:
    """The checkpoint's weights, relative to the run directory."""
    return f"checkpoints/{name}.safetensors"


def state_file(name: str) -> str:
    """The checkpoint's trainer state (optimizer, RNG, rows), relative to the run directory."""
    return f"checkpoints/{name}.state.safetensors"
