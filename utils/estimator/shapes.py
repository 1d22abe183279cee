"""The model's side of the estimate: the few numbers of a config that set training memory, and the GPUs.

:class:`ModelShape` holds them; :func:`shape_from_config` reads them from a ``transformers`` config, a
mapping or a ``config.json`` (:func:`load_shape`), refusing architectures the estimator does not model;
:func:`common_shapes` loads the published architectures in ``data/configs``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

# transformers model types built as the estimator models them: decoder blocks of attention (grouped-query
# allowed) and a gated three-matrix MLP, RMSNorm, no position-embedding table.
LLAMA_LIKE = ("llama", "mistral", "qwen2")
# Biases a model type always has, whatever its config says: Qwen2's q, k and v projections
# (transformers' modeling_qwen2.py builds them with bias=True; its config has no attention_bias field).
_FIXED_BIASES = {"qwen2": ("q_proj", "k_proj", "v_proj")}
_BIAS_FLAGS = {  # Llama's config flags (modeling_llama.py) and the linear layers each gives a bias
    "attention_bias": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp_bias": ("gate_proj", "up_proj", "down_proj"),
}
_NOT_MODELLED = {  # model_type: what the estimator does not model
    "gpt2": "GPT-2's Conv1D layers with biases, its two-matrix GELU MLP and its learned position embeddings",
    "gpt_neo": "GPT-Neo's biases, two-matrix GELU MLP, local attention and learned position embeddings",
    "opt": "OPT's biases, two-matrix ReLU MLP, LayerNorm and learned position embeddings",
}

_CONFIG_FIELDS = {  # ModelShape field: transformers config attribute
    "layers": "num_hidden_layers",
    "hidden": "hidden_size",
    "intermediate": "intermediate_size",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "vocab": "vocab_size",
    "tied_embeddings": "tie_word_embeddings",
}



@dataclass(frozen=True)
class ModelShape:
    """The numbers of a Llama-style decoder that set its training memory.

    ``head_dim`` defaults to ``hidden // heads``; ``biases`` names the linear layers of each block that carry a
    bias (Qwen2: q, k and v); ``name`` and ``source`` are labels only.
    """

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool
    head_dim: int | None = None
    biases: tuple[str, ...] = ()
    name: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        for f in ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab"):
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelShape.{f} must be a positive integer, got {value!r}.")
        if not isinstance(self.tied_embeddings, bool):
            raise ValueError(f"ModelShape.tied_embeddings must be True or False, got {self.tied_embeddings!r}.")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads}).")
        if self.head_dim is None:
            if self.hidden % self.heads:
                raise ValueError(f"hidden ({self.hidden}) is not a multiple of heads ({self.heads}): give head_dim.")
            object.__setattr__(self, "head_dim", self.hidden // self.heads)
        elif isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int) or self.head_dim < 1:
            raise ValueError(f"ModelShape.head_dim must be a positive integer, got {self.head_dim!r}.")
        biases = tuple(name for name in self.linear_shapes() if name in set(self.biases))  # layer order
        if unknown := sorted(set(self.biases) - set(biases)):
            raise ValueError(f"ModelShape.biases names {unknown}: choose from {', '.join(self.linear_shapes())}.")
        object.__setattr__(self, "biases", biases)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``{name: (out_features, in_features)}`` of the seven linear layers of one decoder layer."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
                "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}

    def bias_sizes(self) -> dict[str, int]:
        """``{name: out_features}`` of the linear layers of one block that carry a bias."""
        return {name: o for name, (o, _) in self.linear_shapes().items() if name in self.biases}

    def parameters(self) -> int:
        """Number of parameters (tied embeddings counted once)."""
        per_layer = sum(o * n for o, n in self.linear_shapes().values()) + sum(self.bias_sizes().values())
        per_layer += 2 * self.hidden  # the two RMSNorm weights
        heads = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * per_layer + heads + self.hidden


def shape_from_config(config: Any, name: str = "", source: str = "") -> ModelShape:
    """A :class:`ModelShape` from a ``transformers`` config or a mapping with the same keys.

    Also accepts the ModelShape field names (``layers``, ``hidden`` ...). A missing field raises a
    ``ValueError`` that names it; so does a ``model_type`` outside :data:`LLAMA_LIKE` (it names what the
    estimator does not model). Biases come from the model type (Qwen2) or Llama's ``attention_bias`` and
    ``mlp_bias`` flags.
    """
    if isinstance(config, ModelShape):
        return config
    get = config.get if isinstance(config, Mapping) else (lambda k, default=None: getattr(config, k, default))
    model_type = get("model_type", None)  # absent in data/configs/*.json, which are all Llama-style
    if model_type is not None and model_type not in LLAMA_LIKE:
        what = _NOT_MODELLED.get(model_type, "its layers, whose shapes and sizes it does not know")
        raise ValueError(f"The estimator models Llama-style decoders ({', '.join(LLAMA_LIKE)}), not {model_type!r}: "
                         f"it does not model {what}, so it would give a wrong number. Measure this model with "
                         "utils.measure_training_step instead.")
    values: dict[str, Any] = {}
    missing = []
    for f, key in _CONFIG_FIELDS.items():
        value = get(key, get(f, None))
        if value is None and f == "kv_heads":
            value = get("num_attention_heads", get("heads", None))  # transformers: defaults to heads
        if value is None:
            missing.append(key)
        values[f] = value
    if missing:
        raise ValueError(f"The model config lacks {', '.join(repr(m) for m in missing)}. The estimator needs "
                         f"{', '.join(_CONFIG_FIELDS.values())} (and optionally head_dim).")
    biases = set(_FIXED_BIASES.get(model_type, ())) | set(get("biases", ()) or ())
    for flag, layers in _BIAS_FLAGS.items():
        if get(flag, False):
            biases |= set(layers)
    head_dim = get("head_dim", None)
    return ModelShape(**values, head_dim=head_dim, biases=tuple(biases), name=name or str(get("name", "") or ""),
                      source=source or str(get("source", "") or ""))


def load_shape(path: str | os.PathLike) -> ModelShape:
    """Read a :class:`ModelShape` from a JSON file (``data/configs/*.json``, or a model's config.json)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No config file {path}.")
    data = json.loads(path.read_text(encoding="utf-8"))
    return shape_from_config(data, name=data.get("name", path.stem), source=data.get("source", str(path)))


def common_shapes(folder: str | os.PathLike | None = None) -> dict[str, ModelShape]:
    """The published architectures in ``data/configs`` (1B ... 70B), by name, smallest first."""
    folder = Path(folder) if folder else Path(__file__).resolve().parents[2] / "data" / "configs"
    shapes = [load_shape(p) for p in sorted(folder.glob("*.json"))]
    if not shapes:
        raise FileNotFoundError(f"No *.json architecture files in {folder}.")
    return {s.name: s for s in sorted(shapes, key=lambda s: s.parameters())}

