"""`analyze(run)`: every applicable analysis of a run's checkpoints, saved under RUN/analysis/.

Each analysis is one entry of `ANALYSES`: a name (its path under RUN/analysis/<checkpoint>/), a
test of whether it applies to the model and task, and a function from a `Subject` (one loaded
checkpoint with its data) to a `Result`. Most apply to every run; composition needs 2+ layers,
sparsity MLPs, patching a task with corrupted inputs, and the readings of attention on text
(`text_heads/attention`, `text_heads/skip_trigrams`) a text task (`Task.is_text`: lm, classify).
Finished results are skipped, so an interrupted call resumes where it stopped; a checkpoint whose
results all exist is not even loaded.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from tqdm.auto import tqdm

from toylens.analysis import attention as att
from toylens.analysis.ablation import KINDS, ablate
from toylens.analysis.attribution import logit_attribution, logit_lens
from toylens.analysis.attribution_patching import AttributionPatcher
from toylens.analysis.circuits import circuits
from toylens.analysis.composition import composition_scores
from toylens.analysis.edge_attribution import EdgeScores, edge_attribution, smallest_circuit
from toylens.analysis.metrics import METRICS, Metric, make_metric
from toylens.analysis.patching import Patcher, rows_per_pass
from toylens.analysis.path_patching import path_patching
from toylens.analysis.regularisation import activation_sparsity, weight_norms
from toylens.analysis.skip_trigrams import frequent_tokens, skip_trigrams
from toylens.analysis.summary import summarize_checkpoint, write_trajectory
from toylens.analysis.text_heads import input_positions, text_heads
from toylens.config import RunConfig, derived
from toylens.device import DeviceLike, resolve_device
from toylens.errors import ToylensError
from toylens.memory import reuse_freed_memory
from toylens.model import Transformer
from toylens.rundir import Loaded, RunDir, RunLike, Spec, as_rundir, load, resolve, run_lock
from toylens.rundir.results import Result, has_result
from toylens.tasks import Batch, CorruptedPair, Task, task_class
from toylens.tasks.repeated import HALF

P = TypeVar("P", bound=Patcher)


@dataclass(frozen=True)
class Settings:
    """How much data each analysis uses (defaults suit small models on a CPU)."""

    n_examples: int = 256
    """Task examples for head scores, attribution, logit lens, sparsity and ablations."""
    n_patch: int = 32
    """Clean/corrupted pairs for patching."""
    n_repeated: int = 100
    """Repeated random sequences for the induction-style head scores."""
    repeated_half: int = HALF
    """Length of each half of a repeated sequence (shrunk to fit n_ctx)."""
    n_pattern_examples: int = 4
    """Example inputs whose attention patterns are saved."""
    max_pattern_pos: int = 64
    """Saved example patterns are cut to this many positions."""
    max_trigram_tokens: int = 2048
    """Skip-trigram candidates: at most this many of the most frequent tokens in the examples."""
    ablate_neurons: bool = True
    """Also ablate every MLP neuron (one stacked pass per neuron chunk: slow with a 50K vocabulary)."""
    patch_metric: str | None = None
    """Patching metric: logit_diff, neg_loss or accuracy (default: the task's `patch_metric`)."""
    ig_steps: int = 5
    """Interpolation steps of EAP-IG (edge attribution with integrated gradients)."""
    circuit_target: float = 0.8
    """Faithfulness: the circuit is the fewest edges with the largest EAP-IG scores that recover this
    fraction of the metric gap (sizes tried on a ~1.4x grid; see `smallest_circuit`)."""
    seed: int = 0


class Subject:
    """One checkpoint under analysis: the model, its task, and the data every analysis shares."""

    def __init__(self, run: RunDir, config: RunConfig, checkpoint: str, device: torch.device, settings: Settings):
        self.run, self.checkpoint, self.device, self.settings = run, checkpoint, device, settings
        # The model config and the task's class facts decide what applies, before anything is loaded.
        self.cfg, self.task_class = config.model, task_class(config.task)

    @functools.cached_property
    def loaded(self) -> Loaded:
        return load(self.run, self.checkpoint, self.device)

    @property
    def model(self) -> Transformer:
        return self.loaded.model

    @property
    def task(self) -> Task:
        return self.loaded.task

    @functools.cached_property
    def data(self) -> Batch:
        split = self.task.splits[self.task.eval_splits[0]]
        n = _fit(self.model, self.settings.n_examples)
        b = split.batch(torch.arange(min(n, len(split))))
        return Batch(b.tokens, b.targets)

    @functools.cached_property
    def repeated_scores(self) -> att.HeadScores:
        """Head scores on repeated random tokens (shared by head_scores/repeated and the text readings)."""
        return att.repeated_token_scores(
            self.model,
            self.task.random_token_ids(),
            self.task.bos_token(),
            n_seq=self.settings.n_repeated,
            half=self.settings.repeated_half,
            seed=self.settings.seed,
        )

    @property
    def metric_name(self) -> str:
        # A task without patching still names the (skipped) patching results.
        return self.settings.patch_metric or self.task_class.patch_metric or "neg_loss"

    @functools.cached_property
    def patcher(self) -> Patcher:
        return self._pair_analysis(Patcher)

    @functools.cached_property
    def attribution_patcher(self) -> AttributionPatcher:
        return self._pair_analysis(AttributionPatcher)

    def _pair_analysis(self, cls: type[P]) -> P:
        """Exact or attribution patching of the task's corrupted pairs, with the patching metric."""
        pair, metric = self.pair
        labels = self.task.token_labels(pair.clean[0])
        return cls(self.model, pair.clean, pair.corrupted, metric, pos_labels=labels, description=pair.description)

    @functools.cached_property
    def pair(self) -> tuple[CorruptedPair, Metric]:
        """The task's corrupted pairs for patching, and the patching metric."""
        pair = self.task.corrupted_pair(_fit(self.model, self.settings.n_patch), self.settings.seed)
        return pair, make_metric(self.metric_name, pair.answers, pair.wrong)

    def edges(self, ig_steps: int) -> EdgeScores:
        pair, metric = self.pair
        return edge_attribution(
            self.model, pair.clean, pair.corrupted, metric, ig_steps=ig_steps, description=pair.description
        )


def _fit(model: Transformer, n: int) -> int:
    """Fewer examples when one batch of logits would be too big (large vocabularies, long contexts)."""
    return max(1, min(n, rows_per_pass(model, derived(model.cfg.n_ctx, "n_ctx"))))


# ----------------------------------------------------------------------------- the analyses


def _attention_task(s: Subject) -> Result:
    n, p = s.settings.n_pattern_examples, s.settings.max_pattern_pos
    tokens = s.data.tokens[:n, :p]
    return att.AttentionPatterns(
        tokens=tokens,
        labels=[s.task.token_labels(t) for t in tokens],
        patterns=att.attention_patterns(s.model, tokens.to(s.device)).cpu(),
        sources=["task"] * len(tokens),
    )


def _repeated(s: Subject, n: int) -> torch.Tensor:
    half = min(s.settings.repeated_half, (derived(s.model.cfg.n_ctx, "n_ctx") - 1) // 2)
    return att.repeated_tokens(s.task.random_token_ids(), n, half, s.task.bos_token(), s.settings.seed)


def _attention_repeated(s: Subject) -> Result:
    tokens = _repeated(s, 2)[:, : s.settings.max_pattern_pos]
    return att.AttentionPatterns(
        tokens=tokens,
        labels=[s.task.token_labels(t) for t in tokens],
        patterns=att.attention_patterns(s.model, tokens.to(s.device)).cpu(),
        sources=["repeated random tokens"] * len(tokens),
    )


def _head_scores_repeated(s: Subject) -> Result:
    return s.repeated_scores


TASK_RELATIONS = {
    "previous_token": (att.previous_token, "mean attention to the previous position"),
    "first_token": (att.first_token, "mean attention to position 0"),
    "duplicate_token": (att.duplicate_token, "mean attention to earlier copies of the current token"),
    "induction": (att.induction, "mean attention to tokens that followed earlier copies of the current token"),
    "next_output": (att.next_output, "mean attention to earlier copies of the token this position must output"),
}


def _head_scores_task(s: Subject) -> Result:
    relations = {k: r for k, (r, _) in TASK_RELATIONS.items() if k != "next_output" or s.task.outputs_are_tokens}
    out = att.head_scores(s.model, s.data.tokens, relations, s.data.targets)
    return att.HeadScores(
        scores={k: v.score.cpu() for k, v in out.items()},
        hits={k: v.hit.cpu() for k, v in out.items()},
        layer_hits={k: v.layer_hit.cpu() for k, v in out.items()},
        descriptions={k: TASK_RELATIONS[k][1] for k in out},
        dataset=f"{len(s.data.tokens)} examples of the {s.task.name} task's evaluation split",
    )


def _next_output_by_pos(s: Subject) -> Result:
    out = att.head_scores(s.model, s.data.tokens, {"next_output": att.next_output}, s.data.targets, per_position=True)
    return att.PositionScores(
        relation="next_output",
        description=TASK_RELATIONS["next_output"][1],
        scores=out["next_output"].score.cpu(),
        hits=out["next_output"].hit.cpu(),
        layer_hits=out["next_output"].layer_hit.cpu(),
        n_examples=len(s.data.tokens),
    )


def _circuits(s: Subject) -> Result:
    labels = s.task.token_labels(torch.arange(derived(s.model.cfg.d_vocab, "d_vocab")))
    copy = None if s.task.outputs_are_tokens else torch.tensor([], dtype=torch.long)
    return circuits(s.model, labels, s.task.output_labels(), copy_tokens=copy)


def _text_heads(s: Subject) -> Result:
    return text_heads(
        s.model,
        s.data.tokens,
        input_positions(s.data.targets),
        token_labels=s.task.token_labels,
        boundary=s.task.boundary_tokens(),
        repeated_induction=s.repeated_scores.scores["induction"],
    )


def _skip_trigrams(s: Subject) -> Result:
    valid = input_positions(s.data.targets)
    candidates = frequent_tokens(s.data.tokens, valid, s.settings.max_trigram_tokens)
    output_labels: Callable[[torch.Tensor], list[str]] = s.task.token_labels
    if s.task.outputs_are_tokens:  # output id i is token i
        outputs, said = candidates[candidates < s.task.spec.d_vocab_out], "the same tokens"
    else:  # classes
        names = s.task.output_labels()
        outputs, said = torch.arange(len(names)), "every class"
        output_labels = lambda ids: [names[i] for i in ids.tolist()]  # noqa: E731
    text = (
        f"the {len(candidates)} most frequent of the {int(s.data.tokens[valid].unique().numel())} tokens in "
        f"{len(s.data.tokens)} examples of the {s.task.name} task's evaluation split (at most "
        f"{s.settings.max_trigram_tokens}); outputs: {said}"
    )
    return skip_trigrams(s.model, candidates, outputs, s.task.token_labels, output_labels, candidates_text=text)


def _ablation(kind: str) -> Callable[[Subject], Result]:
    return lambda s: ablate(
        s.model, s.data.tokens, s.data.targets, kind, seed=s.settings.seed, neurons=s.settings.ablate_neurons
    )


def _patch(variant: str) -> Callable[[Subject], Result]:
    return lambda s: getattr(s.patcher, variant)()


def _atp(variant: str) -> Callable[[Subject], Result]:
    return lambda s: getattr(s.attribution_patcher, variant)()


def _faithfulness(s: Subject) -> Result:
    """The fewest strongest edges by EAP-IG recovering circuit_target of the gap, everything else
    ablated to the corrupted run."""
    pair, metric = s.pair
    edges = s.edges(s.settings.ig_steps)
    return smallest_circuit(s.model, pair.clean, pair.corrupted, metric, edges, s.settings.circuit_target)


@dataclass(frozen=True)
class Analysis:
    name: str
    """Path under RUN/analysis/<checkpoint>/; "{metric}" stands for Settings.patch_metric."""
    compute: Callable[[Subject], Result | None]
    applies: Callable[[Subject], bool] = lambda s: True

    def path(self, subject: Subject) -> str:
        return self.name.format(metric=subject.metric_name)


def _has_mlp(s: Subject) -> bool:
    return not s.cfg.attn_only


def _text(s: Subject) -> bool:
    return s.task_class.is_text


def _patchable(s: Subject) -> bool:
    return s.task_class.patch_metric is not None


def _attributable(s: Subject) -> bool:
    """Attribution patching needs a gradient: not with the (piecewise constant) accuracy metric."""
    return _patchable(s) and s.metric_name != "accuracy"


PATCH_VARIANTS = (
    "resid_pre",
    "attn_out",
    "mlp_out",
    "head_out",
    "head_out_by_pos",
    "head_pattern",
    "head_pattern_by_pos",
    "head_values",
    "head_values_by_pos",
)

# Attribution patching: the same grids estimated from one backward pass (so MLP neurons too,
# which exact patching would take a pass per neuron chunk for).
ATP_VARIANTS = (*PATCH_VARIANTS, "neurons")
MLP_VARIANTS = ("mlp_out", "neurons")

ANALYSES: list[Analysis] = [
    Analysis("attention/task", _attention_task),
    Analysis("attention/repeated", _attention_repeated),
    Analysis("head_scores/repeated", _head_scores_repeated),
    Analysis("head_scores/task", _head_scores_task),
    Analysis("head_scores/next_output_by_pos", _next_output_by_pos, lambda s: s.task_class.outputs_are_tokens),
    Analysis("text_heads/attention", _text_heads, _text),
    Analysis("text_heads/skip_trigrams", _skip_trigrams, _text),
    Analysis("circuits", _circuits),
    Analysis("composition", lambda s: composition_scores(s.model), lambda s: s.cfg.n_layers > 1),
    Analysis("weight_norms", lambda s: weight_norms(s.model)),
    Analysis("sparsity", lambda s: activation_sparsity(s.model, s.data.tokens), _has_mlp),
    Analysis("logit_attribution", lambda s: logit_attribution(s.model, s.data.tokens, s.data.targets)),
    Analysis("logit_lens", lambda s: logit_lens(s.model, s.data.tokens, s.data.targets)),
    *[
        Analysis(
            f"patching/{{metric}}/{v}",
            _patch(v),
            (lambda s: _patchable(s) and _has_mlp(s)) if v == "mlp_out" else _patchable,
        )
        for v in PATCH_VARIANTS
    ],
    *[Analysis(f"ablation/{k}", _ablation(k)) for k in KINDS],
    *[
        Analysis(
            f"atp/{{metric}}/{v}",
            _atp(v),
            (lambda s: _attributable(s) and _has_mlp(s)) if v in MLP_VARIANTS else _attributable,
        )
        for v in ATP_VARIANTS
    ],
    Analysis("eap/{metric}/edges", lambda s: s.edges(1), _attributable),
    Analysis("eap/{metric}/edges_ig", lambda s: s.edges(s.settings.ig_steps), _attributable),
    Analysis("eap/{metric}/faithfulness", _faithfulness, _attributable),
    Analysis("path_patching/{metric}/direct", lambda s: path_patching(s.patcher), _patchable),
]


# --------------------------------------------------------------------------------- driver


def analyze(
    run: RunLike,
    checkpoint: Spec = "final",
    *,
    device: DeviceLike = "auto",
    only: list[str] | None = None,
    settings: Settings | None = None,
    progress: bool = True,
) -> list[str]:
    """Run every applicable analysis (or those named in `only`, by name or prefix such as
    "patching") on the checkpoints `checkpoint` names (any spec of `toylens.rundir.checkpoints`: final,
    best, 3, epoch-0003, all, "3,5"); returns the result paths written (relative to RUN).
    Results go under the checkpoint's name: `final` writes RUN/analysis/epoch-<last>/.
    `device` "auto" is cuda when available, else cpu; on a CPU, malloc is tuned first (toylens.memory)."""
    rundir, settings = as_rundir(run), settings or Settings()
    if settings.patch_metric not in (None, *METRICS):
        raise ToylensError(f"patch metric {settings.patch_metric!r}: expected one of {', '.join(METRICS)}")
    dev = resolve_device(device)
    if dev.type == "cpu":
        reuse_freed_memory()  # stacked patching and ablation passes rebuild the same large tensors
    with run_lock(rundir.path, "analyze"):
        names = [c.name for c in resolve(rundir, checkpoint)]
        config = rundir.config()
        subjects = [Subject(rundir, config, name, dev, settings) for name in names]
        paths = {a.name: a.path(subjects[0]) for a in ANALYSES}
        chosen = [a for a in ANALYSES if not only or any(_selects(o, paths[a.name]) for o in only)]
        if only and not chosen:
            raise ToylensError(f"--only {only}: no such analysis (have: {', '.join(paths.values())})")
        written: list[str] = []
        bar = tqdm(total=len(names) * len(chosen), disable=not progress, desc="analyze", unit="result")
        for name, subject in zip(names, subjects):
            for a in chosen:
                bar.set_postfix_str(f"{name}: {a.name}")
                rel = f"analysis/{name}/{paths[a.name]}"
                if not has_result(rundir, rel) and a.applies(subject):
                    result = a.compute(subject)
                    if result is not None:
                        result.save(rundir, rel)
                        written.append(rel)
                bar.update()
            summarize_checkpoint(rundir, name)
        bar.close()
        write_trajectory(rundir)
        return written


def _selects(pattern: str, path: str) -> bool:
    """--only matches a result path or any group it belongs to ("patching", "head_scores")."""
    pattern = pattern.rstrip("/")
    return path == pattern or path.startswith(pattern + "/")
