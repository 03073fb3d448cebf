"""The transformer's arithmetic lives in one place, `toylens.model.functional`.

A walk over the syntax tree of every file in `src/toylens` finds code that computes a LayerNorm,
the MLP's activation, the attention softmax or the unembedding itself, or (outside `model/`)
runs the model's parts by hand instead of `Transformer.forward`. The detector is tested too: it
must catch each snippet of the code this replaced, planted in a file of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "toylens"
CORE = "model/functional.py"
CORE_MODULE = "toylens.model.functional"

NORMS = {"layer_norm", "LayerNorm", "rms_norm", "RMSNorm", "group_norm", "native_layer_norm"}
ACTIVATIONS = {"relu", "relu_", "gelu", "ReLU", "GELU", "silu", "SiLU", "gelu_new"}
SOFTMAXES = {"softmax", "Softmax", "softmax_", "scaled_dot_product_attention"}  # not log_softmax: a loss
PRODUCTS = {"matmul", "mm", "bmm", "addmm", "baddbmm", "einsum", "linear", "tensordot", "inner", "mv", "addmv", "dot"}
PARTS = {"embed", "pos_embed", "ln1", "ln2", "attn", "mlp", "ln_final", "unembed"}  # a Transformer's submodules

# Code that looks like the arithmetic but is not the forward pass, each with the reason.
ALLOWED = {
    ("analysis/circuits.py", "_fold", "LayerNorm"): "folds LayerNorm's centring into a weight matrix (no activations)",
    ("analysis/circuits.py", "full_ov", "unembedding"): "a circuit: weights times weights, W_E @ W_V W_O @ W_U",
}


def _mentions_unembedding(node: ast.AST) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and n.id == "W_U" or isinstance(n, ast.Attribute) and n.attr == "W_U":
            return True
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and "W_U" in n.value:
            return True
    return False


def _keepdim_mean(node: ast.AST) -> bool:
    """`.mean(..., keepdim=True)` (or torch.mean): a mean kept for broadcasting against its input."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "mean"):
        return False
    return any(
        k.arg == "keepdim" and isinstance(k.value, ast.Constant) and k.value.value is True for k in node.keywords
    )


def _squared(node: ast.AST) -> bool:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in ("pow", "square")
    return isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Pow, ast.Mult))


class _Finder(ast.NodeVisitor):
    """Collects (line, function, concept) for one file; calls through the core are fine."""

    def __init__(self, outside_model: bool):
        self.outside_model = outside_model
        self.core_names: set[str] = set()  # the core module's aliases and the names imported from it
        self.torch_names: set[str] = set()  # names bound to torch's modules and functions
        self.other_names: set[str] = set()  # names imported from anywhere else (toylens's own modules)
        self.functions: list[str] = ["<module>"]
        self.found: list[tuple[int, str, str]] = []

    def report(self, node: ast.AST, concept: str) -> None:
        self.found.append((node.lineno, self.functions[-1], concept))

    def _bind(self, module: str, name: str) -> None:
        if module == CORE_MODULE:
            self.core_names.add(name)
        (self.torch_names if module.split(".")[0] == "torch" else self.other_names).add(name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            full = f"{node.module}.{alias.name}"
            self._bind(full if full == CORE_MODULE else node.module or "", alias.asname or alias.name)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._bind(alias.name, alias.asname or alias.name.split(".")[0])

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def _through_core(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in self.core_names
        return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in self.core_names

    def _name(self, node: ast.AST) -> str | None:
        return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in self.torch_names:  # e.g. from torch.nn.functional import relu
            self._reference(node, node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        root = node.value
        while isinstance(root, ast.Attribute):
            root = root.value
        # torch.relu, F.gelu, nn.LayerNorm, a tensor's .softmax(); not a toylens module's own names
        if not (isinstance(root, ast.Name) and root.id in self.other_names):
            self._reference(node, node.attr)
        self.generic_visit(node)

    def _reference(self, node: ast.AST, name: str) -> None:
        if name in NORMS:
            self.report(node, "LayerNorm")
        elif name in ACTIVATIONS:
            self.report(node, "activation")
        elif name in SOFTMAXES:
            self.report(node, "attention softmax")

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.Sub) and _keepdim_mean(node.right):
            self.report(node, "LayerNorm")  # centring
        if isinstance(node.op, ast.MatMult) and _mentions_unembedding(node):
            self.report(node, "unembedding")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = self._name(node.func)
        if _keepdim_mean(node) and _squared(node.func.value):
            self.report(node, "LayerNorm")  # the variance a norm divides by
        if name in PRODUCTS and not self._through_core(node.func) and any(map(_mentions_unembedding, node.args)):
            self.report(node, "unembedding")
        if name == "linear" and self._through_core(node.func) and any(map(_mentions_unembedding, node.args)):
            self.report(node, "unembedding")  # the core has unembed for that
        if self.outside_model and not self._through_core(node.func):
            if name in PARTS or isinstance(node.func, ast.Subscript) and self._name(node.func.value) == "blocks":
                self.report(node, "forward pass by hand")
        self.generic_visit(node)


def find(source: str, path: str) -> list[tuple[str, int, str, str]]:
    """(path, line, function, concept) for each piece of the forward pass computed outside the core."""
    finder = _Finder(outside_model=not path.startswith("model/"))
    finder.visit(ast.parse(source))
    return [(path, line, function, concept) for line, function, concept in finder.found]


def scan(root: Path) -> list[tuple[str, int, str, str]]:
    found = []
    for file in sorted(root.rglob("*.py")):
        path = file.relative_to(root).as_posix()
        if path != CORE:
            found += find(file.read_text(), path)
    return found


def test_no_arithmetic_outside_the_core():
    found = scan(SRC)
    unexpected = [f for f in found if (f[0], f[2], f[3]) not in ALLOWED]
    assert not unexpected, "use toylens.model.functional (or Transformer.forward) instead:\n" + "\n".join(
        f"  src/toylens/{path}:{line} in {function}: {concept}" for path, line, function, concept in unexpected
    )
    # Each allowed exception is still there, so the list cannot outlive what it excuses.
    assert {(f[0], f[2], f[3]) for f in found} == set(ALLOWED)


def test_the_core_is_where_the_arithmetic_is():
    """The core itself has every concept (so the detector recognises real implementations)."""
    concepts = {f[3] for f in find((SRC / CORE).read_text(), "model/functional.py")}
    assert {"LayerNorm", "activation", "attention softmax"} <= concepts


# The code this replaced, and ways around the core a newcomer might write.
PLANTED = {
    "stacked LayerNorm": (
        "LayerNorm",
        """
def _norm(x, params, name, eps=1e-5):
    x = x - x.mean(-1, keepdim=True)
    scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return x / scale * params[f"{name}.w"].unsqueeze(1) + params[f"{name}.b"].unsqueeze(1)
""",
    ),
    "RMS norm": ("LayerNorm", "y = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6)"),
    "torch's LayerNorm": ("LayerNorm", "y = F.layer_norm(x, (x.shape[-1],), w, b)"),
    "activation switch": ("activation", "post = F.relu(pre) if cfg.act_fn == 'relu' else F.gelu(pre)"),
    "activation method": ("activation", "post = pre.relu()"),
    "explicit attention": ("attention softmax", "z = torch.einsum('bhqk,bkhe->bqhe', scores.softmax(-1), v)"),
    "fused attention": ("attention softmax", "z = F.scaled_dot_product_attention(q, k, v, is_causal=True)"),
    "logit lens by hand": ("unembedding", "logits = x @ model.W_U + model.b_U"),
    "stacked unembedding": (
        "unembedding",
        "logits = torch.baddbmm(params['unembed.b_U'].unsqueeze(1), x, params['unembed.W_U'])",
    ),
    "core.linear for logits": (
        "unembedding",
        "from toylens.model import functional as core\nlogits = core.linear(x, W_U, b_U)",
    ),
    "final norm by hand": ("forward pass by hand", "logits = model.unembed(model.ln_final(final[:, positions]))"),
    "block by hand": ("forward pass by hand", "resid = model.blocks[j](resid, prefix)"),
    "MLP by hand": ("forward pass by hand", "resid = resid + block.mlp(block.ln2(resid))"),
}


@pytest.mark.parametrize("name", list(PLANTED))
def test_the_detector_catches_a_planted_reimplementation(name, tmp_path):
    concept, snippet = PLANTED[name]
    (tmp_path / "model").mkdir()
    (tmp_path / "analysis").mkdir()
    (tmp_path / CORE).write_text(PLANTED["stacked LayerNorm"][1])  # the core may do all of it
    (tmp_path / "analysis" / "clean.py").write_text(CLEAN)
    (tmp_path / "analysis" / "planted.py").write_text(snippet)
    found = scan(tmp_path)
    assert found and {f[3] for f in found} == {concept}
    assert {f[0] for f in found} == {"analysis/planted.py"}


# What must not be flagged: calls through the core, a loss's log_softmax, a mean kept for other uses.
CLEAN = """
from toylens.model import functional as core
from toylens.model.functional import layer_norm


def logits(model, x, w, b, scale):
    x = core.layer_norm(x, w, b) + layer_norm(x, w, scale=scale)
    return core.unembed(x, model.W_U, model.b_U).log_softmax(-1)


def mean_source(act):
    return act.mean(0, keepdim=True)


def run(model, resid, read):
    return model(residual=resid, start_at_layer=1, positions=read)
"""


def test_the_detector_passes_code_that_goes_through_the_core():
    assert find(CLEAN, "analysis/clean.py") == []
    assert (
        find("def f(blocks, x):\n    return blocks[0](x)\n", "model/transformer.py") == []
    )  # the model runs its parts
