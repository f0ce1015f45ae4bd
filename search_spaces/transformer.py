"""BERT-family encoder classifiers (Hugging Face ``...ForSequenceClassification``) and their space.

Units, per encoder layer in order: the *layer* (removable; at least one stays), its *attention*
(shrinkable in heads) and its *FFN* (shrinkable in intermediate neurons). Heads and neurons kept are
those with the largest weight L1 norm (a head: its query/key/value rows plus its output-projection
columns; a neuron: its up-projection row plus its down-projection column). Students inherit the
embeddings, the kept layers (remapped to consecutive indices, as DistilBERT took layers of BERT),
the kept heads and neurons, the pooler and the classifier.

transformers 5 configs hold one head count and one FFN width for all layers, so a student with
per-layer widths is described by n2n's own arch (the teacher config plus per-layer heads/FFN) and
rebuilt by n2n. With ``uniform=True`` the space has one shared FFN ratio and no head decisions:
every student is then expressible as a stock config (fewer layers, one intermediate_size) and
exports through ``save_pretrained`` too.
"""

from __future__ import annotations

from pathlib import Path
import reprlib

import torch
from torch import nn

from .base import SearchSpace, StudentSpec, Unit
from .base import UnsupportedModel, check_reproduces

# The model types whose encoders this space reads, slims and rebuilds exactly, checked end to end
# (search, export, from_pretrained, pipeline(), ONNX; helper-92; CamemBERT and data2vec-text are
# RoBERTa's modules under other names, helper-94). Others alike in name are laid out
# otherwise, and were accepted, then slimmed wrongly or not at all (helper-92): X-MOD's per-language
# adapters, DeBERTa's and MPNet's relative attention, MegatronBERT's and RoBERTa-PreLayerNorm's norms
# before the sublayers, MobileBERT's bottlenecks; DistilBERT and ModernBERT keep no encoder.layer.
MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "data2vec-text", "electra", "ernie")


def check_model_type(model_type, where: str) -> None:
    """Refuse a transformers model type outside `MODEL_TYPES`, before any search or training."""
    if model_type not in MODEL_TYPES:
        raise UnsupportedModel(f"{where}: model_type {model_type!r} is not a transformer n2n can slim: expected one "
                               f"of {', '.join(MODEL_TYPES)} (BERT-family encoders whose layers n2n rebuilds exactly)")


def masked_id(config) -> int:
    """The token id n2n masks as padding for a transformers `config`: its pad_token_id, else 0."""
    return config.pad_token_id if config.pad_token_id is not None else 0


class HFClassifier(nn.Module):
    """Token ids (B, T) -> logits (B, classes); padding (``pad_token_id``) is masked out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.pad_token_id = masked_id(model.config)

    @property
    def config(self):
        """The wrapped model's transformers config (helper-40: the README promised `.config`)."""
        return self.model.config

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward_with_hidden(ids, hidden=False)[0]

    def forward_with_hidden(self, ids: torch.Tensor, hidden: bool = True):
        """(logits (B, classes), hidden states: embeddings then one (B, T, H) per layer, or None)."""
        ids = ids.long()
        out = self.model(input_ids=ids, attention_mask=(ids != self.pad_token_id).long(), output_hidden_states=hidden)
        return out.logits, out.hidden_states


def _layers(model: nn.Module) -> nn.ModuleList:
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or not all(hasattr(l, "attention") and hasattr(l, "intermediate") for l in layers):
        raise UnsupportedModel(f"{type(model).__name__}: expected a BERT-family encoder (encoder.layer[i] with "
                               "attention.self.query/key/value, attention.output.dense, intermediate.dense, output.dense)")
    return layers


def _head_size(config) -> int:
    return config.hidden_size // config.num_attention_heads


def _shrink_layer(layer: nn.Module, heads: int, ffn: int, head_size: int) -> None:
    """Replace a layer's linear modules by narrower ones (fresh weights)."""
    att, hidden = layer.attention.self, layer.attention.output.dense.out_features
    a = heads * head_size
    for name in ("query", "key", "value"):
        setattr(att, name, nn.Linear(hidden, a))
    att.num_attention_heads, att.all_head_size = heads, a  # forward reshapes with -1 heads
    layer.attention.output.dense = nn.Linear(a, hidden)
    layer.intermediate.dense = nn.Linear(hidden, ffn)
    layer.output.dense = nn.Linear(ffn, hidden)


# transformers fetches a Hub kernel named as an attention or experts implementation, and runs it
# (flash_attention_2 without its package too): only its own attention code is let through
_HUB_CODE_KEYS = {key: allowed for name, allowed in (("attn_implementation", ("eager", "sdpa")), ("experts_implementation", ()))
                  for key in (name, f"_{name}", f"_{name}_internal")}


def check_no_hub_code(config: dict, where: str) -> None:
    """Refuse a transformers config (a Hugging Face folder's config.json, an n2n student's arch.json)
    that would make transformers fetch code from the Hub and run it, or run code of the folder's own
    (`auto_map`: transformers asks whether to run it and runs it on "y"; helper-41 for config.json,
    helper-57 for arch.json, whose config went to AutoConfig.for_model with its auto_map)."""
    if config.get("auto_map"):
        raise UnsupportedModel(f"{where}: auto_map names code of the folder's own ({reprlib.repr(config['auto_map'])}), "
                               f"which n2n never runs; expected a model and tokenizer transformers ships (BERT-family "
                               f"encoders)")
    for key, allowed in _HUB_CODE_KEYS.items():
        value = config.get(key)
        if value is not None and value not in allowed:
            raise UnsupportedModel(f"{where}: {key} is {value!r}, which transformers may fetch from the Hub as a "
                                   f"kernel and run; expected {' or '.join(allowed) or 'none'} (delete the key for "
                                   f"the default)")


def classifier_from_config(config: dict, where: str, attn_implementation: str | None = None) -> HFClassifier:
    """A sequence classifier of a transformers config, as `to_dict` gives it (weights not loaded).
    `attn_implementation`: the one the model was loaded with, which `to_dict` leaves out (helper-93: a
    config's "eager" gave the driver eager attention and a worker's rebuilt teacher sdpa)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    check_no_hub_code(config, where)  # before transformers reads any of it (helper-32)
    cfg = dict(config)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    how = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return HFClassifier(AutoModelForSequenceClassification.from_config(config, trust_remote_code=False, **how)).eval()


def encoder_from_arch(arch: dict) -> HFClassifier:
    """Rebuild an encoder student from n2n's arch (weights not loaded)."""
    if not isinstance(arch["config"], dict):
        raise UnsupportedModel(f"arch.json config: expected a JSON object, got {type(arch['config']).__name__}")
    model = classifier_from_config({**arch["config"], "num_hidden_layers": len(arch["layers"])}, "arch.json config").model
    hs = _head_size(model.config)
    for layer, w in zip(_layers(model), arch["layers"]):
        _shrink_layer(layer, w["heads"], w["ffn"], hs)
    ffn = {w["ffn"] for w in arch["layers"]}
    if len(ffn) == 1:  # one FFN width: the module's config says it (one head count per config cannot say fewer heads)
        model.config.intermediate_size = ffn.pop()
    return HFClassifier(model).eval()


def hf_expressible(arch: dict) -> bool:
    """True when a stock config describes the student: all heads kept, one FFN width."""
    heads = arch["config"]["num_attention_heads"]
    return all(w["heads"] == heads for w in arch["layers"]) and len({w["ffn"] for w in arch["layers"]}) == 1


class TransformerSpace(SearchSpace):
    pretrained_transformer = True  # distilled at distill.transformer_lr (n2n.train.DistillConfig.for_space)

    def __init__(self, teacher: nn.Module, input_shape, ratios=None, uniform: bool = False):
        if not isinstance(teacher, HFClassifier):
            teacher = HFClassifier(teacher)
        check_model_type(teacher.config.model_type, type(teacher.model).__name__)
        kwargs = {} if ratios is None else {"ratios": tuple(ratios)}
        super().__init__(teacher=teacher, input_shape=tuple(input_shape), **kwargs)
        self.uniform = uniform
        cfg = teacher.model.config
        self.hidden, self.heads, self.ffn = cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size
        self.head_size = _head_size(cfg)
        self.n_layers = len(_layers(teacher.model))
        layer_params = self._layer_params(self.heads, self.ffn)
        self.base_params = sum(p.numel() for p in teacher.parameters()) - self.n_layers * layer_params
        attn = self._layer_params(self.heads, 0) - self._layer_params(0, 0)
        ffn = self._layer_params(0, self.ffn) - self._layer_params(0, 0)
        self.layer_unit, self.attn_unit, self.ffn_unit = [], [], []
        for i in range(self.n_layers):
            self.layer_unit.append(len(self.units))
            self.units.append(Unit(name=f"layer{i}", kind="layer", width=self.hidden, params=layer_params,
                                   removable=True, shrinkable=False, skip_start=True, skip_end=True))
            if not uniform:
                self.attn_unit.append(len(self.units))
                self.units.append(Unit(name=f"attn{i}", kind="attention", width=self.heads, params=attn,
                                       removable=False, shrinkable=True, why_fixed="remove the layer instead", parent=self.layer_unit[i]))
                self.ffn_unit.append(len(self.units))
                self.units.append(Unit(name=f"ffn{i}", kind="ffn", width=self.ffn, params=ffn, removable=False,
                                       shrinkable=True, why_fixed="remove the layer instead", parent=self.layer_unit[i]))
        if uniform:  # one FFN decision shared by every layer
            shared = len(self.units)
            self.units.append(Unit(name="ffn", kind="ffn", width=self.ffn, params=ffn * self.n_layers, removable=False,
                                   shrinkable=True, why_fixed="remove layers instead"))
            self.ffn_unit = [shared] * self.n_layers
        # token ids, the last quarter of the second text padding (masked): the unchanged student must
        # compute what the teacher does, or a layer n2n does not copy would be lost in every student
        t = self.input_shape[0]
        ids = torch.randint(0, cfg.vocab_size, (2, t), generator=torch.Generator().manual_seed(0))  # (2, T)
        ids[1, t - t // 4:] = teacher.pad_token_id
        check_reproduces(teacher, lambda: self.build(self.identity()), self.input_shape, "n2n's transformer space", x=ids)

    def _layer_params(self, heads: int, ffn: int) -> int:
        h, a = self.hidden, heads * self.head_size
        return 3 * (h * a + a) + (a * h + h) + (h * ffn + ffn) + (ffn * h + h) + 4 * h  # + two LayerNorms

    def _kept(self, spec: StudentSpec) -> list[tuple[int, int, int]]:
        """(teacher layer index, heads, ffn) of every kept layer."""
        out = []
        for i in range(self.n_layers):
            if self.layer_unit[i] in spec.removed:
                continue
            heads = self.heads if self.uniform else self.width_of(self.attn_unit[i], spec.ratios[self.attn_unit[i]])
            out.append((i, heads, self.width_of(self.ffn_unit[i], spec.ratios[self.ffn_unit[i]])))
        return out

    def _check(self, spec: StudentSpec) -> str | None:
        if not self._kept(spec):
            return "every encoder layer is removed; a student keeps at least one"
        return None

    def params(self, spec: StudentSpec) -> int:
        return self.base_params + sum(self._layer_params(h, f) for _, h, f in self._kept(spec))

    def flops(self, spec: StudentSpec) -> int:
        """MACs for one sequence of input_shape[0] tokens: linear layers plus attention scores and mixing."""
        t, h = self.input_shape[0], self.hidden
        total = 0
        for _, heads, ffn in self._kept(spec):
            a = heads * self.head_size
            total += t * (4 * h * a + 2 * h * ffn) + 2 * t * t * a
        return total + h * h + h * self.teacher.model.config.num_labels  # pooler + classifier, first token

    def hidden_map(self, spec: StudentSpec) -> list[tuple[int, int]]:
        """(student hidden-state index, teacher hidden-state index) of every kept layer (0 = embeddings)."""
        return [(j + 1, i + 1) for j, (i, _, _) in enumerate(self._kept(spec))]

    def arch(self, spec: StudentSpec) -> dict:
        cfg = self.teacher.model.config.to_dict()
        keep = {k: cfg[k] for k in cfg if not k.startswith("_") and k not in ("transformers_version", "architectures")}
        layers = [{"heads": h, "ffn": f, "teacher_layer": i} for i, h, f in self._kept(spec)]
        return {"family": "hf-encoder", "input_shape": list(self.input_shape), "config": keep, "layers": layers}

    def hidden_states(self, model: nn.Module, x: torch.Tensor):
        return model.forward_with_hidden(x)

    def export_extras(self, student: nn.Module, arch: dict, folder) -> list[str]:
        """`hf/` through save_pretrained when a stock config describes the student (fewer layers,
        one FFN width, all heads), so transformers loads it with from_pretrained."""
        if not hf_expressible(arch):
            return []
        student.model.config.intermediate_size = arch["layers"][0]["ffn"]
        student.model.save_pretrained(Path(folder) / "hf")
        return ["hf"]

    def _build(self, spec: StudentSpec, inherit: bool) -> nn.Module:
        arch = self.arch(spec)
        student = encoder_from_arch(arch)
        if not inherit:
            return student
        t_layers, s_layers = _layers(self.teacher.model), _layers(student.model)
        own = {k: v for k, v in self.teacher.state_dict().items() if ".encoder.layer." not in k}
        student.load_state_dict(own, strict=False)  # embeddings, pooler, classifier
        hs = self.head_size
        for sl, w in zip(s_layers, arch["layers"]):
            tl = t_layers[w["teacher_layer"]]
            ta, sa = tl.attention, sl.attention
            score = sum(getattr(ta.self, n).weight.abs().view(self.heads, hs, -1).sum((1, 2)) for n in ("query", "key", "value"))
            score = score + ta.output.dense.weight.abs().view(-1, self.heads, hs).sum((0, 2))  # (heads,)
            heads = sorted(torch.topk(score, w["heads"]).indices.tolist())
            rows = [h * hs + j for h in heads for j in range(hs)]
            for n in ("query", "key", "value"):
                getattr(sa.self, n).weight.copy_(getattr(ta.self, n).weight[rows])
                getattr(sa.self, n).bias.copy_(getattr(ta.self, n).bias[rows])
            sa.output.dense.weight.copy_(ta.output.dense.weight[:, rows])
            sa.output.dense.bias.copy_(ta.output.dense.bias)
            sa.output.LayerNorm.load_state_dict(ta.output.LayerNorm.state_dict())
            up, down = tl.intermediate.dense, tl.output.dense
            neuron = up.weight.abs().sum(1) + down.weight.abs().sum(0)  # (ffn,)
            keep = sorted(torch.topk(neuron, w["ffn"]).indices.tolist())
            sl.intermediate.dense.weight.copy_(up.weight[keep])
            sl.intermediate.dense.bias.copy_(up.bias[keep])
            sl.output.dense.weight.copy_(down.weight[:, keep])
            sl.output.dense.bias.copy_(down.bias)
            sl.output.LayerNorm.load_state_dict(tl.output.LayerNorm.state_dict())
        return student


def text_positions(model) -> int | None:
    """How many tokens a transformers encoder reads (None for other models): its position embeddings,
    less RoBERTa's offset (its positions start after the padding id, so 514 embeddings read 512 tokens)."""
    model = getattr(model, "model", model)  # an HFClassifier's transformers model
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    embeddings = getattr(getattr(model, "base_model", None), "embeddings", None)
    offset = getattr(embeddings, "padding_idx", None)
    return None if positions is None else positions - (offset + 1 if isinstance(offset, int) else 0)


def is_hf_model(model: nn.Module) -> bool:
    """A transformers model (or n2n's wrapper of one, or a subclass of the user's), whatever its layout:
    the transformer space's, or refused (helper-92: DistilBERT went to the generic space, which fed it
    random floats as ids)."""
    import sys

    inner = model.model if isinstance(model, HFClassifier) else model
    transformers = sys.modules.get("transformers")  # not imported: no model of it (and no import for a VGG)
    return transformers is not None and isinstance(inner, transformers.PreTrainedModel)

