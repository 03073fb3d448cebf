"""Export a trained model to TransformerLens (optional extra: `pip install toylens[tl]`).

    from toylens.export import to_transformer_lens
    tl_model = to_transformer_lens("runs/sort-no-decay")      # or a Transformer, or a Loaded run
    logits, cache = tl_model.run_with_cache(tokens)           # same logits, same hook names

    toylens export runs/sort-no-decay --to transformer-lens   # -> RUN/export/transformer-lens/epoch-0012.safetensors
    tl_model = load_transformer_lens("runs/sort-no-decay/export/transformer-lens/epoch-0012.safetensors")

toylens models use TransformerLens's parameter names and shapes, so no weight is transformed by
hand: with transformer-lens >= 4 (where HookedTransformer was removed) the model is built with
`TransformerBridge.boot_native` from a config mapped field by field, TransformerLens's own
`convert_tl_checkpoint` turns our state dict into the bridge's, and it is loaded with
`strict=True` so a missing or extra weight is an error. With transformer-lens 3.x the state dict
loads into a `HookedTransformer` directly (checked by hand with 3.9.0; the test suite installs
the current release, so CI exercises the bridge path only).

The exported file is safetensors: the bridge's state dict, with the TransformerLens config and
the toylens config in its metadata. It is named after the checkpoint it holds (`--checkpoint
final` of a 12-epoch run writes epoch-0012.safetensors; see `toylens.rundir.checkpoints`).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import torch

from toylens.config import ModelConfig, validate_config
from toylens.device import DeviceLike, resolve_device
from toylens.errors import ToylensError
from toylens.model import Transformer
from toylens.rundir import Loaded, RunLike, Spec, as_rundir, load, read_file, resolve_one

EXPORT_DIR = "export/transformer-lens"


def tl_major_version() -> int:
    try:
        return int(importlib.metadata.version("transformer-lens").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        raise ToylensError("transformer-lens is not installed; install it with: pip install 'toylens[tl]'") from None


def tl_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """The TransformerLens config fields that describe the same architecture."""
    return {
        "d_model": cfg.d_model,
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "d_head": cfg.d_head,
        "d_mlp": cfg.d_mlp,
        "n_ctx": cfg.n_ctx,
        "d_vocab": cfg.d_vocab,
        "d_vocab_out": cfg.d_vocab_out,
        "act_fn": cfg.act_fn,  # relu / gelu (exact erf GELU) mean the same in both
        "normalization_type": "LN" if cfg.normalization == "LN" else None,
        "eps": 1e-5,
        "attn_only": cfg.attn_only,
        "positional_embedding_type": "standard",
    }


def _as_model(source: Transformer | Loaded | RunLike, checkpoint: Spec, device: DeviceLike | None) -> Transformer:
    if isinstance(source, Transformer):
        return source
    if isinstance(source, Loaded):
        return source.model
    return load(source, checkpoint, device or "auto").model


def to_transformer_lens(
    source: Transformer | Loaded | RunLike, checkpoint: Spec = "final", device: DeviceLike | None = None
) -> Any:
    """A TransformerLens model (TransformerBridge for >= 4, HookedTransformer for < 4) with the
    same weights as a toylens model, a loaded run (`Loaded`), or a run directory's checkpoint.
    On `device`; by default the model's device (a run's checkpoint is loaded with "auto")."""
    model = _as_model(source, checkpoint, device)
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if tl_major_version() >= 4:
        return _bridge(tl_config_dict(model.cfg), state, device)
    return _hooked_transformer(tl_config_dict(model.cfg), state, device)


def _bridge(config: dict[str, Any], state: dict[str, torch.Tensor], device: Any, converted: bool = False) -> Any:
    import transformer_lens.model_bridge.sources  # noqa: F401  (attaches TransformerBridge.boot_native)
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    cfg = TransformerBridgeConfig(**config, architecture="TransformerLensNative", init_weights=False)
    # boot_native is attached to the class by importing model_bridge.sources, so its stubs lack it.
    bridge = TransformerBridge.boot_native(cfg, device=device)  # type: ignore[attr-defined]
    weights = state if converted else convert_tl_checkpoint(state, bridge.cfg)
    bridge.load_state_dict({k: v.to(device) for k, v in weights.items()}, strict=True)
    return bridge.eval()


def _hooked_transformer(config: dict[str, Any], state: dict[str, torch.Tensor], device: Any) -> Any:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    config = {k: v for k, v in config.items() if k != "d_mlp" or v is not None}
    model = HookedTransformer(HookedTransformerConfig(**config, device=str(device)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # HookedTransformer keeps its causal mask and IGNORE constant as buffers; nothing else may differ.
    missing = [k for k in missing if not k.endswith((".mask", ".IGNORE"))]
    if missing or unexpected:
        raise ToylensError(f"TransformerLens model does not match (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device).eval()


def export_transformer_lens(run: RunLike, checkpoint: Spec = "final", device: DeviceLike = "auto") -> Path:
    """Write the bridge's state dict (TransformerLens >= 4 format) for one checkpoint of a run
    (final, best, 3, epoch-0003) into RUN/export/transformer-lens/<name>.safetensors, <name> being
    the checkpoint's (epoch-0012 for final); returns that path. `device` is where the model is
    built and converted ("auto": cuda when available, else cpu); the file is the same either way."""
    rundir = as_rundir(run)
    ckpt = resolve_one(rundir, checkpoint, "export")
    if tl_major_version() < 4:
        raise ToylensError(
            "toylens export writes the transformer-lens >= 4 format; use to_transformer_lens() with older versions"
        )
    loaded = load(rundir, ckpt.name, device)
    bridge = to_transformer_lens(loaded)
    rel = f"{EXPORT_DIR}/{ckpt.name}.safetensors"
    meta = {
        "transformer_lens_config": tl_config_dict(loaded.model.cfg),
        "config": loaded.config.model_dump(mode="json"),
        "format": "transformer-lens-bridge/1",
    }
    rundir.write_tensors(rel, bridge.state_dict(), meta)
    return rundir.path / rel


def load_transformer_lens(path: str | Path, device: DeviceLike = "auto") -> Any:
    """The TransformerBridge saved by `export_transformer_lens` (or `toylens export`), on `device`
    ("auto": cuda when available, else cpu). Inside its run directory the file is verified against
    the run's manifest, as every checkpoint is."""
    tensors, meta, _ = read_file(path)
    if meta.get("format") != "transformer-lens-bridge/1":
        raise ToylensError(f"{path}: not a toylens TransformerLens export")
    validate_config(meta["config"], str(path))
    tl_major_version()
    return _bridge(meta["transformer_lens_config"], tensors, resolve_device(device), converted=True)
