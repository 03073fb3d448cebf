"""Interpretability: what a trained model does, as functions, and as saved results for the report.

    from toylens.analysis import analyze
    analyze("runs/sort-no-decay", checkpoint="all")        # = toylens analyze RUN --checkpoint all

The modules, one concept each (all device-agnostic; every function works for any number of layers
and heads, with or without MLPs and LayerNorm):

    attention.py    patterns; head scores over data (previous/first/duplicate token, induction,
                    next output); repeated random token inputs
    residual.py     cache algebra: residual stream parts, accumulated residual, ln_final on parts,
                    the stream at a stage and the keys/values before a position (to resume a run)
    attribution.py  direct logit attribution, logit lens
    circuits.py     full QK (tokens, positions) and OV circuits as FactoredMatrix, copying scores
    text_heads.py   readings of attention on text: top token pairs, BOS/punctuation/duplicate shares,
                    positional share, head types (lm and classify runs)
    skip_trigrams.py  top skip-trigrams of the layer-0 heads from their full OV and QK circuits
    composition.py  Q/K/V composition scores with the random baseline
    regularisation.py  weight norms, MLP activation sparsity
    metrics.py      patching metrics: logit difference, -loss, accuracy
    patching.py     the batched patching engine and its named variants (Patcher)
    fast_patching.py  the engine's fast path: start after the patch, compute only what it changes
    attribution_patching.py  attribution patching (AtP): the same grids to first order, from
                    one backward pass (AttributionPatcher)
    graph.py        the residual-stream graph: writers, readers, edges, what each writer wrote
    edge_attribution.py  EAP and EAP-IG over the residual-stream graph (writers -> each head's
                    q/k/v input, each MLP input, the logits)
    path_patching.py  exact direct path patching over the same graph (sender -> receiver)
    ablation.py     zero / mean / resample ablation of heads and neurons
    summary.py      headline scalars per checkpoint and over checkpoints
    driver.py       `analyze()`, the driver behind `toylens analyze`

The local learning coefficient (`toylens.llc`, RUN/llc/) and development over training
(`toylens.development`, RUN/development/) are stages of their own: they read the run directory,
not these results. Saved results are typed `toylens.rundir.results.Result`s.

What an analysis needs to know about a task (are outputs tokens, which ids are special, the
corrupted inputs and metric for patching, which positions the loss reads) it asks the task
(`toylens.tasks.Task`); nothing here is keyed by a task's name.

## Saved results (what the report reads; it never needs the model)

`toylens analyze RUN --checkpoint SPEC` writes, for each checkpoint C that SPEC names
("epoch-0003", "step-000120", ...; `final` and `best` are stored under the checkpoint they stand
for, see `toylens.rundir.checkpoints`), one result per analysis under `RUN/analysis/C/`. A result named `X` is
`X.json` plus `X.safetensors` when it has arrays; the JSON holds the type, the scalar/list fields
and, for every array, its shape, dtype and axis names (see `toylens.rundir.results`). Load any of them with
`load_result(RUN, "analysis/C/X")`. Layers and heads are numbered from 0; a head is
labelled `L{layer}H{head}`. Every file is listed with its SHA-256 in RUN/manifest.json.

| result (X)                       | type              | arrays [axes]                                   |
|----------------------------------|-------------------|-------------------------------------------------|
| attention/task                   | AttentionPatterns | tokens [example, pos]; patterns [example, layer, head, query, key]; `labels`: token labels per example. First n_pattern_examples (4) evaluation examples, cut to 64 positions |
| attention/repeated               | AttentionPatterns | the same for 2 sequences [BOS, r, r] of random tokens |
| head_scores/repeated             | HeadScores        | scores/<name>, hits/<name> [layer, head] for previous_token, first_token, duplicate_token, induction on 100 repeated random sequences (the field's induction test; `dataset` says exactly which) |
| head_scores/task                 | HeadScores        | the same relations measured on task data, plus next_output (attend to a copy of the token to output next) when outputs are tokens |
| head_scores/next_output_by_pos   | PositionScores    | scores, hits [layer, head, pos]: next_output per query position (sorting: SEP attends to the minimum, each output position to the value it writes next); NaN where a position has no target |
| circuits                         | Circuits          | qk_tokens [layer, head, query_token, key_token], qk_positions [layer, head, query_pos, key_pos], ov_tokens [layer, head, attended_token, output_token] (corners of at most 128 tokens/positions; `token_labels`, `out_labels`); copying [layer, head] (NaN when outputs are not tokens) |
| text_heads/attention             | TextHeads         | lm and classify runs only. pair_query, pair_key, pair_share, pair_count [layer, head, rank]: the 10 (query token, attended token) pairs with the most attention (share of the head's attention), `labels` id -> token string; fractions/<name> [layer, head]: share of attention on first_position, bos (first position or a boundary token), punctuation, previous_token, duplicate_token, induction; scores/<name>: the same over the queries where the relation marks a key; positional_share [layer, head] (1 = position alone); offset_profile [layer, head, offset]; repeated_induction; `types` per head; `thresholds`, `definitions` |
| text_heads/skip_trigrams         | SkipTrigrams      | lm and classify runs only. sources, source_scores [head, rank]: layer-0 source tokens whose centred full OV row peaks highest; outputs, output_scores [head, rank, output_rank]; destinations, destination_scores [head, rank, destination_rank] (centred full QK / sqrt(d_head)); `token_labels`, `output_labels`; `whole_model` (1-layer attention-only: exact, else layer 0's direct path); `candidates` says which tokens |
| composition                      | Composition       | q, k, v [layer1, head1, layer2, head2] (NaN unless layer1 < layer2); baseline_mean/std per kind and baseline_formula 1/sqrt(d_model). Only with 2+ layers |
| weight_norms                     | WeightNorms       | heads/W_Q..W_O, heads/QK, heads/OV [layer, head]; `norms` per named matrix; `total_matrices` |
| sparsity                         | Sparsity          | fraction_active, l1, dead_fraction [layer]; neuron_frequency [layer, neuron]. Only with MLPs |
| logit_attribution                | LogitAttribution  | total [component], by_pos [component, pos]: direct logit attribution of each part (`labels`: embed, pos_embed, L0H0.., L0 b_O, MLP0.., bias) to logit(target) - mean logit |
| logit_lens                       | LogitLens         | loss, accuracy, correct_logit [layer]: read out after each layer (`labels`: resid_pre 0.., final) |
| patching/<variant>               | PatchGrid         | values, normalized [`grid_axes`]: resid_pre, attn_out, mlp_out [layer, pos]; head_out, head_pattern, head_values [layer, head]; head_out_by_pos, head_values_by_pos [layer, pos, head]; head_pattern_by_pos [layer, head, dest]. `metric` + `metric_description`, `clean`/`corrupted` metric values; normalized = (value - corrupted) / (clean - corrupted): 1 = patching this cell restores the clean behaviour, 0 = no effect. `labels` per axis (positions labelled with the first clean example's tokens) |
| atp/<metric>/<variant>           | AttributionGrid   | the patching grids above, plus neurons [layer, neuron], estimated by attribution patching: values = corrupted + sum over the cell of (a_clean - a_corrupted) * d metric / d a at the corrupted run (denoising, as the exact grids), normalized as theirs. Not with the accuracy metric (no gradient) |
| eap/<metric>/edges, /edges_ig    | EdgeScores        | scores, normalized [writer, reader]: edge attribution patching (EAP; edges_ig: EAP-IG with `ig_steps`) from writers (embed, L{l}H{h}, MLP{l}) to readers (L{l}H{h}.q/.k/.v, MLP{l}, logits); NaN where no edge. Not with accuracy |
| eap/<metric>/faithfulness        | Faithfulness      | circuit [writer, reader]: the fewest strongest edges by EAP-IG recovering `circuit_target` (0.8) of the gap, sizes on a ~1.4x grid (`sizes`, `curve`); `recovered` = (metric with every other edge ablated to the corrupted run - corrupted) / (clean - corrupted) |
| path_patching/<metric>/direct    | PathPatchGrid     | values, normalized [sender, receiver] (the senders and receivers of EdgeScores): the corrupted run with one receiver's own input changed by one sender's clean - corrupted output (no other reader sees it; what the receiver then writes flows on to the logits); exact, also with accuracy; normalized as the patching grids; NaN where no path |
| ablation/zero, /mean, /resample  | Ablation          | heads [layer, head], neurons [layer, neuron]: loss change in nats (ablated - base_loss) |
| summary                          | CheckpointSummary | (JSON only) results present, epoch, step, and `scalars` such as "head_scores/repeated/induction.max" / ".argmax" |

`RUN/analysis/trajectory.json` (a `Trajectory`, JSON only) lists every analysed checkpoint in
training order with its epoch and step, and each summary scalar as a series over them: the
curves that show, e.g., an induction head forming.

Metrics (patching): `logit_diff` = logit(clean answer) - logit(corrupted answer) where they differ;
`neg_loss` = minus the cross-entropy of the clean targets; `accuracy` = fraction of clean targets
that are the top logit. All are "higher = more like the clean run".
"""

from toylens.analysis.ablation import Ablation, ablate
from toylens.analysis.attention import (
    AttentionPatterns,
    HeadScores,
    PositionScores,
    attention_patterns,
    head_scores,
    repeated_token_scores,
    repeated_tokens,
)
from toylens.analysis.attribution import (
    LogitAttribution,
    LogitLens,
    direct_logit_attribution,
    logit_attribution,
    logit_lens,
)
from toylens.analysis.attribution_patching import AttributionGrid, AttributionPatcher
from toylens.analysis.circuits import Circuits, circuits, copying_scores, full_ov, full_qk_positions, full_qk_tokens
from toylens.analysis.composition import Composition, composition_scores
from toylens.analysis.driver import ANALYSES, Settings, analyze
from toylens.analysis.edge_attribution import EdgeScores, edge_attribution
from toylens.analysis.metrics import Accuracy, LogitDiff, NegLoss
from toylens.analysis.patching import Patcher, PatchGrid, patch_cells
from toylens.analysis.path_patching import PathPatchGrid, path_patching
from toylens.analysis.regularisation import Sparsity, WeightNorms, activation_sparsity, weight_norms
from toylens.analysis.residual import accumulated_resid, apply_ln_final, residual_components
from toylens.analysis.skip_trigrams import SkipTrigrams, skip_trigrams
from toylens.analysis.summary import CheckpointSummary, Trajectory
from toylens.analysis.text_heads import TextHeads, text_heads
from toylens.rundir.results import Result, load_result
from toylens.tasks import CorruptedPair

__all__ = [
    "ANALYSES",
    "Ablation",
    "Accuracy",
    "AttentionPatterns",
    "AttributionGrid",
    "AttributionPatcher",
    "CheckpointSummary",
    "Circuits",
    "Composition",
    "CorruptedPair",
    "EdgeScores",
    "HeadScores",
    "LogitAttribution",
    "LogitDiff",
    "LogitLens",
    "NegLoss",
    "PatchGrid",
    "PathPatchGrid",
    "Patcher",
    "PositionScores",
    "Result",
    "Settings",
    "SkipTrigrams",
    "Sparsity",
    "TextHeads",
    "Trajectory",
    "WeightNorms",
    "ablate",
    "accumulated_resid",
    "activation_sparsity",
    "analyze",
    "apply_ln_final",
    "attention_patterns",
    "circuits",
    "composition_scores",
    "copying_scores",
    "direct_logit_attribution",
    "edge_attribution",
    "full_ov",
    "full_qk_positions",
    "full_qk_tokens",
    "head_scores",
    "load_result",
    "logit_attribution",
    "logit_lens",
    "patch_cells",
    "path_patching",
    "repeated_token_scores",
    "repeated_tokens",
    "residual_components",
    "skip_trigrams",
    "text_heads",
    "weight_norms",
]
