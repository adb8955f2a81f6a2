"""Merging adapters and heads (`average_adapter`, `average_head`) and folding LoRA/(IA)^3 into the weights.

Every strategy is checked against a reference written here in plain torch on the adapters' saved weights; TIES and
DARE also against hand-computed numbers and PEFT's own `merge_utils`.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny import tiny_adapter_model

import workbench
from workbench import AdapterConfigError, AdapterError, HeadError, LoRAConfig
from workbench.core.merging import combine

FULL_LORA = LoRAConfig(attn_matrices=["q", "k", "v"], intermediate_lora=True, output_lora=True, init_weights="bert")
Q = "bert.encoder.layer.{}.attention.self.query.loras.{}.lora_{}"


def model_with(config, names=("a", "b", "c"), model_type="bert", scale=0.3):
    model = tiny_adapter_model(model_type)
    torch.manual_seed(0)
    for name in names:
        model.add_adapter(name, config=config)
        with torch.no_grad():
            for _, param in model._adapter_parameters(name):
                param.add_(torch.randn_like(param) * scale)
    return model


def state(model, name):
    """The adapter's weights as saved, keyed without its name (so adapters can be compared key by key)."""
    return {k.replace(f".{name}.", ".*."): v.clone() for k, v in model.adapter_state_dict(name).items()}


def snapshot(model):
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    return weights, dict(model.adapters), list(model.heads), repr(model.active_adapters), model.active_head


def assert_unchanged(model, before):
    weights, adapters, heads, active, head = before
    after = model.state_dict()
    assert set(after) == set(weights) and all(torch.equal(after[k], weights[k]) for k in weights)
    assert model.adapters.keys() == adapters.keys() and list(model.heads) == heads
    assert repr(model.active_adapters) == active and model.active_head == head


# --- reference merges, written out here -------------------------------------------------------------------


def ref_trim(t, density):
    k = int(density * t.numel())
    keep = torch.zeros(t.numel())
    keep[t.abs().flatten().argsort(descending=True)[:k]] = 1
    return t * keep.view(t.shape)


def ref_ties(tensors, weights, density, method="total", masks=None):
    """TIES: trim (or DARE masks), elect a sign per element over sign(w)·τ, mean of w·τ over those agreeing."""
    signed = [math.copysign(1, w) * t for w, t in zip(weights, tensors, strict=True)]
    if masks is None:
        signed = [ref_trim(t, density) for t in signed]
    else:
        signed = [t * m / density for t, m in zip(signed, masks, strict=True)]
    votes = sum(t if method == "total" else t.sign() for t in signed)
    elected = torch.where(votes >= 0, 1.0, -1.0)
    total, count = torch.zeros_like(signed[0]), torch.zeros_like(signed[0])
    for w, t in zip(weights, signed, strict=True):
        agree = (t.sign() == elected).float()
        total += abs(w) * t * agree
        count += agree
    return total / count.clamp(min=1)


# --- tensor level: hand-computed numbers and PEFT ---------------------------------------------------------

T1 = torch.tensor([1.0, -2.0, 3.0, 0.5])
T2 = torch.tensor([-1.5, 1.0, -4.0, 0.25])


@pytest.mark.parametrize(
    "weights,method,expected",
    [
        ([1, 1], "total", [-1.5, -2.0, -4.0, 0.0]),
        ([2, 0.5], "total", [-0.75, -4.0, -2.0, 0.0]),
        ([2, 0.5], "frequency", [-0.75, -4.0, 6.0, 0.0]),  # element 2: one vote each, a tie elects +
        ([2, -0.5], "total", [0.75, -4.0, 4.0, 0.0]),  # the negated task votes with its negated values
    ],
)
def test_ties_by_hand(weights, method, expected):
    # density 0.5 keeps [0, -2, 3, 0] of T1 and [-1.5, 0, -4, 0] of T2
    merged = combine([T1, T2], weights, "ties", density=0.5, majority_sign_method=method)
    torch.testing.assert_close(merged, torch.tensor(expected))
    torch.testing.assert_close(ref_ties([T1, T2], weights, 0.5, method), torch.tensor(expected))


def test_magnitude_prune_and_linear_by_hand():
    torch.testing.assert_close(combine([T1, T2], [1, 2], "linear"), T1 + 2 * T2)
    merged = combine([T1, T2], [1, -1], "magnitude_prune", density=0.5)
    torch.testing.assert_close(merged, torch.tensor([1.5, -2.0, 7.0, 0.0]))


def test_dare_by_hand_with_a_seed():
    g = torch.Generator().manual_seed(7)
    masks = [torch.bernoulli(torch.full((4,), 0.5), generator=g) for _ in range(2)]
    merged = combine([T1, T2], [1, -3], "dare_linear", density=0.5, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(merged, (T1 * masks[0] - 3 * T2 * masks[1]) / 0.5)
    merged = combine([T1, T2], [1, -3], "dare_ties", density=0.5, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(merged, ref_ties([T1, T2], [1, -3], 0.5, masks=masks))


def test_density_one_prunes_nothing():
    for strategy in ("dare_linear", "magnitude_prune"):
        torch.testing.assert_close(combine([T1, T2], [1, 1], strategy, density=1.0), T1 + T2)
    for strategy in ("ties", "dare_ties"):
        torch.testing.assert_close(combine([T1, T2], [1, 1], strategy, density=1.0), ref_ties([T1, T2], [1, 1], 1.0))


@pytest.mark.parametrize("strategy", ["ties", "dare_ties", "dare_linear", "magnitude_prune"])
@pytest.mark.parametrize("method", ["total", "frequency"])
def test_positive_weights_give_peft_merge_utils_results(strategy, method):
    from peft.utils import merge_utils

    torch.manual_seed(3)
    tensors = [torch.randn(6, 5) for _ in range(3)]
    weights = [0.7, 1.3, 0.4]
    torch.manual_seed(11)
    ours = combine(tensors, weights, strategy, density=0.4, majority_sign_method=method)
    torch.manual_seed(11)  # PEFT draws DARE's masks from the global RNG too
    fn = getattr(merge_utils, strategy)
    args = (0.4, method) if "ties" in strategy else (0.4,)
    torch.testing.assert_close(ours, fn(tensors, torch.tensor(weights), *args))


# --- average_adapter: AdapterHub's strategies ---------------------------------------------------------------


EVERY_METHOD = ["seq_bn", "double_seq_bn", "compacter[phm_dim=2, reduction_factor=8]", "seq_bn_inv", "prefix_tuning"]
EVERY_METHOD += ["lora", "ia3", "mam"]


@pytest.mark.parametrize("config", EVERY_METHOD)
def test_linear_average_of_every_method(config):
    model = model_with(config)
    sources = [state(model, n) for n in "abc"]
    model.average_adapter("avg", ["a", "b", "c"], weights=[2, -1, 1])  # normalised: 1, -0.5, 0.5
    merged = state(model, "avg")
    assert merged.keys() == sources[0].keys() and model.adapters["avg"] == model.adapters["a"]
    for key, value in merged.items():
        torch.testing.assert_close(value, sources[0][key] - 0.5 * sources[1][key] + 0.5 * sources[2][key])


def test_weights_default_normalisation_dict_and_negate():
    model = model_with("seq_bn", names=("a", "b"))
    a, b = state(model, "a"), state(model, "b")
    model.average_adapter("eq", ["a", "b"], normalize_weights=False)  # no weights: 1/n each, as AdapterHub
    model.average_adapter("raw", ["a", "b"], weights=[2, 3], normalize_weights=False)
    model.average_adapter("dict", {"a": 1, "b": 3})
    model.average_adapter("neg", ["a", "b"], weights=[1, 1], negate=["b"])
    for name, (wa, wb) in {"eq": (0.5, 0.5), "raw": (2, 3), "dict": (0.25, 0.75), "neg": (0.5, -0.5)}.items():
        for key, value in state(model, name).items():
            torch.testing.assert_close(value, wa * a[key] + wb * b[key])


@pytest.mark.parametrize("config", [FULL_LORA, "ia3[init_weights=bert]"], ids=["lora", "ia3"])
def test_lora_linear_only_negate_b(config):
    model = model_with(config)
    sources = [state(model, n) for n in "abc"]
    weights = [-1, 1.5, 0.5]  # sum 1: normalising changes nothing
    model.average_adapter("avg", ["a", "b", "c"], weights=weights, combine_strategy="lora_linear_only_negate_b")
    for key, value in state(model, "avg").items():
        ws = [abs(w) for w in weights] if key.endswith("lora_A") else weights
        torch.testing.assert_close(value, sum(w * s[key] for w, s in zip(ws, sources, strict=True)))


def test_lora_delta_w_svd():
    model = model_with(FULL_LORA)
    sources = [state(model, n) for n in "abc"]
    weights = [-1, 1.5, 0.5]
    model.average_adapter("avg", ["a", "b", "c"], weights=weights, combine_strategy="lora_delta_w_svd", svd_rank=4)
    assert model.adapters["avg"] == FULL_LORA.replace(r=4)  # alpha kept: AdapterHub's scaling alpha / svd_rank
    merged = state(model, "avg")
    for layer in range(2):
        a, b = (Q.format(layer, "*", x) for x in "AB")
        delta = sum(w * s[b] @ s[a] for w, s in zip(weights, sources, strict=True))
        u, s, vh = torch.linalg.svd(delta)
        assert merged[a].shape == (4, 32) and merged[b].shape == (32, 4)
        torch.testing.assert_close(merged[b] @ merged[a], u[:, :4] @ torch.diag(s[:4]) @ vh[:4], atol=1e-5, rtol=0)
        torch.testing.assert_close(merged[a] @ merged[a].T, torch.eye(4), atol=1e-5, rtol=0)  # A = Vh[:4]


def test_single_adapter_average_is_a_copy():
    model = model_with(FULL_LORA, names=("a",))
    for strategy in ("linear", "lora_linear_only_negate_b"):
        model.average_adapter(strategy, ["a"], weights=[1], combine_strategy=strategy)
        assert all(torch.equal(v, state(model, "a")[k]) for k, v in state(model, strategy).items())


# --- average_adapter: TIES, DARE and magnitude pruning --------------------------------------------------------


@pytest.mark.parametrize("strategy", ["ties", "magnitude_prune", "dare_linear", "dare_ties"])
def test_pruning_strategies_on_lora_factors(strategy):
    model = model_with(FULL_LORA)
    sources = [state(model, n) for n in "abc"]
    weights = [1.0, -0.5, 2.0]
    model.average_adapter(
        "m",
        ["a", "b", "c"],
        weights=weights,
        normalize_weights=False,
        combine_strategy=strategy,
        density=0.5,
        seed=5,
    )
    merged = state(model, "m")
    g = torch.Generator().manual_seed(5)
    for key in merged:  # projections in model order, A before B: the order the masks are drawn in
        factor = key[-1]
        ws = [math.copysign(math.sqrt(abs(w)), w) if factor == "A" else math.sqrt(abs(w)) for w in weights]
        tensors = [s[key] for s in sources]
        if strategy.startswith("dare"):
            masks = [torch.bernoulli(torch.full_like(t, 0.5), generator=g) for t in tensors]
            if strategy == "dare_ties":
                expected = ref_ties(tensors, ws, 0.5, masks=masks)
            else:
                expected = sum(w * t * m / 0.5 for w, t, m in zip(ws, tensors, masks, strict=True))
        elif strategy == "ties":
            expected = ref_ties(tensors, ws, 0.5)
        else:
            expected = sum(w * ref_trim(t, 0.5) for w, t in zip(ws, tensors, strict=True))
        torch.testing.assert_close(merged[key], expected)


@pytest.mark.parametrize("strategy", ["ties_svd", "dare_linear_svd"])
def test_delta_w_strategies_refactor_the_merged_delta(strategy):
    model = model_with(FULL_LORA.replace(alpha=16))  # scaling 2: merged deltas include it
    sources = [state(model, n) for n in "abc"]
    weights = [1.0, 1.0, -0.5]
    model.average_adapter(
        "m",
        ["a", "b", "c"],
        weights=weights,
        normalize_weights=False,
        combine_strategy=strategy,
        density=0.6,
        svd_rank=3,
        seed=1,
    )
    assert model.adapters["m"].r == 3
    merged = state(model, "m")
    g = torch.Generator().manual_seed(1)
    for a in [k for k in merged if k.endswith("lora_A")]:  # every projection, in model order (DARE's draws)
        b = a[:-1] + "B"
        deltas = [2.0 * s[b] @ s[a] for s in sources]
        if strategy == "ties_svd":
            delta = ref_ties(deltas, weights, 0.6)
        else:
            masks = [torch.bernoulli(torch.full_like(d, 0.6), generator=g) for d in deltas]
            delta = sum(w * d * m / 0.6 for w, d, m in zip(weights, deltas, masks, strict=True))
        u, s, vh = torch.linalg.svd(delta)
        new_scaling = 16 / 3
        torch.testing.assert_close(
            new_scaling * merged[b] @ merged[a], u[:, :3] @ torch.diag(s[:3]) @ vh[:3], atol=1e-5, rtol=1e-5
        )


def test_ties_on_ia3_merges_the_deviation_from_identity():
    model = model_with("ia3[init_weights=ia3]", scale=0.2)
    sources = [state(model, n) for n in "abc"]
    weights = [1.0, 1.0, 1.0]
    model.average_adapter(
        "m",
        ["a", "b", "c"],
        weights=weights,
        normalize_weights=False,
        combine_strategy="ties",
        density=0.5,
        majority_sign_method="frequency",
    )
    for key, value in state(model, "m").items():
        expected = 1 + ref_ties([s[key] - 1 for s in sources], weights, 0.5, "frequency")
        torch.testing.assert_close(value, expected)


def test_dare_seed_is_reproducible_and_global_rng_is_used_without_one():
    model = model_with(FULL_LORA, names=("a", "b"))
    options = dict(combine_strategy="dare_linear", density=0.5)
    model.average_adapter("s1", ["a", "b"], seed=3, **options)
    model.average_adapter("s2", ["a", "b"], seed=3, **options)
    model.average_adapter("s3", ["a", "b"], seed=4, **options)
    torch.manual_seed(9)
    model.average_adapter("g1", ["a", "b"], **options)
    torch.manual_seed(9)
    model.average_adapter("g2", ["a", "b"], **options)
    same = lambda x, y: all(torch.equal(v, state(model, y)[k]) for k, v in state(model, x).items())  # noqa: E731
    assert same("s1", "s2") and same("g1", "g2") and not same("s1", "s3")


# --- average_adapter: refusals leave the model unchanged ------------------------------------------------------


@pytest.fixture
def mixed():
    model = tiny_adapter_model()
    for name, config in [
        ("l1", FULL_LORA),
        ("l2", FULL_LORA),
        ("bn1", "seq_bn"),
        ("bn2", "seq_bn"),
        ("lr8", "lora[r=4]"),
        ("g1", "lora[use_gating=True]"),
        ("g2", "lora[use_gating=True]"),
        ("i1", "ia3"),
        ("i2", "ia3"),
        ("u1", "mam"),
        ("u2", "mam"),
    ]:
        model.add_adapter(name, config=config)
    model.add_classification_head("h")
    model.set_active_adapters("bn1")
    return model


REFUSED = [
    pytest.param(dict(adapter_list=["l1", "l2"], combine_strategy="nope"), "combine_strategy", id="strategy"),
    pytest.param(dict(adapter_list=[]), "empty", id="empty"),
    pytest.param(dict(adapter_list=["l1", "zz"]), "zz", id="unknown-adapter"),
    pytest.param(dict(adapter_list=["l1", "lr8"]), "different configurations", id="configs"),
    pytest.param(dict(adapter_list=["l1", "bn1"]), "different configurations", id="methods"),
    pytest.param(
        dict(adapter_list=["bn1", "bn2"], combine_strategy="lora_linear_only_negate_b"),
        "bottleneck",
        id="negate_b-bottleneck",
    ),
    pytest.param(
        dict(adapter_list=["bn1", "bn2"], combine_strategy="ties", density=0.5), "bottleneck", id="ties-bottleneck"
    ),
    pytest.param(
        dict(adapter_list=["u1", "u2"], combine_strategy="lora_delta_w_svd", svd_rank=2), "ConfigUnion", id="union"
    ),
    pytest.param(dict(adapter_list=["l1", "l2"], combine_strategy="lora_delta_w_svd"), "svd_rank", id="no-svd_rank"),
    pytest.param(dict(adapter_list=["l1", "l2"], svd_rank=2), "svd_rank", id="svd_rank-linear"),
    pytest.param(
        dict(adapter_list=["l1", "l2"], combine_strategy="lora_delta_w_svd", svd_rank=64),
        "svd_rank",
        id="svd_rank-too-large",
    ),
    pytest.param(
        dict(adapter_list=["i1", "i2"], combine_strategy="lora_delta_w_svd", svd_rank=1), "(IA)^3", id="ia3-svd"
    ),
    pytest.param(dict(adapter_list=["g1", "g2"], combine_strategy="lora_linear_only_negate_b"), "gating", id="gating"),
    pytest.param(dict(adapter_list=["l1", "l2"], combine_strategy="ties"), "density", id="no-density"),
    pytest.param(dict(adapter_list=["l1", "l2"], combine_strategy="dare_ties", density=0), "density", id="density=0"),
    pytest.param(dict(adapter_list=["l1", "l2"], density=0.5), "density", id="density-linear"),
    pytest.param(
        dict(adapter_list=["l1", "l2"], combine_strategy="ties", density=0.5, majority_sign_method="max"),
        "majority_sign_method",
        id="sign-method",
    ),
    pytest.param(dict(adapter_list=["l1", "l2"], negate=["bn1"]), "negate", id="negate"),
    pytest.param(dict(adapter_list=["l1", "l2"], sede=1), "sede", id="unknown-option"),
    pytest.param(dict(adapter_list=["l1", "l2"], weights=[1]), "weights", id="weights-count"),
    pytest.param(dict(adapter_list=["l1", "l2"], weights=[1, -1]), "sum to 0", id="weights-sum-0"),
    pytest.param(dict(adapter_list=["l1", "l2"], weights=[1, math.nan]), "weights", id="weights-nan"),
    pytest.param(dict(adapter_list={"l1": 1, "l2": 1}, weights=[1, 1]), "weights", id="dict-and-weights"),
    pytest.param(dict(adapter_name="bn2", adapter_list=["l1", "l2"]), "already exists", id="exists"),
    pytest.param(
        dict(adapter_name="bn2", adapter_list=["l1", "l2"], combine_strategy="ties", overwrite_ok=True),
        "density",
        id="refused-overwrite-keeps-the-old-adapter",
    ),
]


@pytest.mark.parametrize("kwargs,needle", REFUSED)
def test_refused_average_raises_value_error_and_changes_nothing(mixed, kwargs, needle):
    before = snapshot(mixed)
    kwargs = {"adapter_name": "avg", **kwargs}
    with pytest.raises(AdapterError) as caught:
        mixed.average_adapter(**kwargs)
    assert isinstance(caught.value, ValueError)  # what AdapterHub raises
    assert needle in str(caught.value)
    assert_unchanged(mixed, before)


def test_lora_delta_w_svd_is_refused_on_gpt2_like_adapterhub():
    model = model_with(FULL_LORA, names=("a", "b"), model_type="gpt2")
    before = snapshot(model)
    with pytest.raises(AdapterConfigError, match="lora_delta_w_svd"):
        model.average_adapter("m", ["a", "b"], combine_strategy="lora_delta_w_svd", svd_rank=2)
    with pytest.raises(AdapterConfigError, match="fused"):
        model.average_adapter("m", ["a", "b"], combine_strategy="ties_svd", density=0.5, svd_rank=2)
    assert_unchanged(model, before)
    model.average_adapter("m", ["a", "b"], combine_strategy="ties", density=0.5)  # on the factors: fine
    assert "m" in model.adapters


def test_overwrite_and_set_active():
    model = model_with(FULL_LORA, names=("a", "b"))
    model.average_adapter("m", ["a", "b"])
    model.average_adapter("m", ["a", "b"], weights=[1, 0], overwrite_ok=True, set_active=True)
    assert all(torch.equal(v, state(model, "a")[k]) for k, v in state(model, "m").items())
    assert model.active_adapters == workbench.Stack("m")


# --- average_head ----------------------------------------------------------------------------------------------


def heads_model():
    model = tiny_adapter_model()
    torch.manual_seed(1)
    for name in ("h1", "h2", "h3"):
        model.add_classification_head(name, num_labels=3, set_active=False)
    return model


def test_average_head():
    model = heads_model()
    sources = [{k: v.clone() for k, v in model.heads[n].state_dict().items()} for n in ("h1", "h2", "h3")]
    model.average_head("avg", ["h1", "h2", "h3"], weights=[1, 2, 1])
    assert model.heads["avg"].config == model.heads["h1"].config
    for key, value in model.heads["avg"].state_dict().items():
        torch.testing.assert_close(value, 0.25 * sources[0][key] + 0.5 * sources[1][key] + 0.25 * sources[2][key])
    model.average_head("raw", ["h1", "h2"], weights=[1, 1], normalize_weights=False, set_active=True)
    assert model.active_head == "raw"
    torch.testing.assert_close(model.heads["raw"][1].weight, sources[0]["1.weight"] + sources[1]["1.weight"])


def test_average_head_keeps_a_tied_lm_head_tied():
    model = tiny_adapter_model("gpt2")
    model.add_causal_lm_head("l1")
    model.add_causal_lm_head("l2")
    model.average_head("avg", ["l1", "l2"])
    assert model.heads["avg"][-1].weight is model.get_input_embeddings().weight


@pytest.mark.parametrize(
    "setup,kwargs",
    [
        (lambda m: None, dict(head_list=["h1", "nope"])),
        (lambda m: None, dict(head_list=[])),
        (lambda m: None, dict(head_list=["h1", "h2"], weights=[1])),
        (lambda m: None, dict(head_name="h3", head_list=["h1", "h2"])),
        (lambda m: m.add_tagging_head("t", num_labels=3, set_active=False), dict(head_list=["h1", "t"])),
        (lambda m: m.add_classification_head("c2", num_labels=2, set_active=False), dict(head_list=["h1", "c2"])),
    ],
    ids=["unknown", "empty", "weights", "exists", "class", "config"],
)
def test_refused_average_head_changes_nothing(setup, kwargs):
    model = heads_model()
    setup(model)
    before = snapshot(model)
    with pytest.raises(HeadError):
        model.average_head(**{"head_name": "avg", **kwargs})
    assert_unchanged(model, before)


def test_heads_differing_only_in_dropout_average():
    model = heads_model()
    model.heads["h2"].config["dropout_prob"] = 0.3
    model.average_head("avg", ["h1", "h2"])
    assert "avg" in model.heads


# --- merge_adapter / reset_adapter ------------------------------------------------------------------------------


def base_weights(model):
    return {k: v.clone() for k, v in model.state_dict().items() if ".loras." not in k}


def assert_bit_exact(model, before):
    after = base_weights(model)
    assert all(torch.equal(after[k], before[k]) for k in before)


def undos(model):
    return [t for t in model._engine.methods["lora"].targets.values() if t.merged is not None]


@pytest.mark.filterwarnings("ignore:.*zero init")
@pytest.mark.parametrize("model_type", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize(
    "configs",
    [(FULL_LORA, FULL_LORA), ("ia3[init_weights=bert]", "ia3[init_weights=lora]"), (FULL_LORA, "ia3")],
    ids=["lora", "ia3", "lora+ia3"],
)
def test_several_merges_and_resets_are_bit_exact(model_type, configs):
    model = model_with(configs[0], names=("a",), model_type=model_type)
    model.add_adapter("b", config=configs[1])
    before = base_weights(model)
    for name in ("a", "b", "a", "a", "b"):
        model.merge_adapter(name)
        assert any(not torch.equal(v, before[k]) for k, v in base_weights(model).items()) or name == "b"
        model.reset_adapter()
        assert_bit_exact(model, before)
    model.merge_adapter("a")
    model.reset_adapter()
    model.reset_adapter()  # a second reset is a no-op
    assert_bit_exact(model, before)


def test_no_copy_of_the_weight_is_kept():
    model = model_with(FULL_LORA, names=("a",), model_type="llama")
    model.merge_adapter("a")
    for target in undos(model):
        weight = target.module.weight
        undo = target.restore["undo"]
        kept = [t for t in (undo.steps, undo.index, undo.values, undo.copy) if t is not None]
        assert undo.copy is None and all(t.device == weight.device for t in kept)
        assert undo.nbytes() <= weight.numel() * weight.element_size() // 2  # int8 steps (+ rare exceptions)


def test_reset_is_exact_even_if_the_adapter_changes_while_merged():
    model = model_with(FULL_LORA, names=("a",))
    before = base_weights(model)
    model.merge_adapter("a")
    with torch.no_grad():
        for _, param in model._adapter_parameters("a"):
            param.mul_(3)
    model.reset_adapter()
    assert_bit_exact(model, before)


def test_merge_and_reset_in_bfloat16_are_bit_exact():
    model = model_with(FULL_LORA, names=("a",), model_type="llama").to(torch.bfloat16)
    before = base_weights(model)
    model.merge_adapter("a")
    assert any(not torch.equal(v, before[k]) for k, v in base_weights(model).items())
    model.reset_adapter()
    assert_bit_exact(model, before)


MERGED_KINDS = [FULL_LORA, "ia3[init_weights=bert]", "dora[init_weights=bert]", "vera[init_weights=bert]"]


@pytest.mark.filterwarnings("ignore:.*zero init")
@pytest.mark.parametrize("config", MERGED_KINDS, ids=["lora", "ia3", "dora", "vera"])
@pytest.mark.parametrize("start,end", [(torch.bfloat16, torch.float32), (torch.float16, torch.float32)])
def test_a_widening_cast_while_merged_resets_bit_for_bit_in_the_new_dtype(start, end, config, recwarn):
    """bf16/fp16 -> fp32 keeps the merged weight exactly: reset gives what casting the unmerged model gives."""
    model = model_with(config, names=("a",), model_type="llama").to(start)
    expected = {k: v.to(end) for k, v in base_weights(model).items()}
    model.merge_adapter("a")
    model.to(end)
    model.reset_adapter()
    assert_bit_exact(model, expected)
    assert not [w for w in recwarn if "not bit for bit" in str(w.message)]


@pytest.mark.filterwarnings("ignore:.*zero init")
@pytest.mark.parametrize(
    "undo,config",
    [("reset_adapter", c) for c in MERGED_KINDS] + [("set_active_adapters", FULL_LORA), ("delete_adapter", FULL_LORA)],
    ids=["lora", "ia3", "dora", "vera", "set_active_adapters", "delete_adapter"],
)
@pytest.mark.parametrize(
    "start,end", [(torch.float32, torch.bfloat16), (torch.float16, torch.bfloat16), (torch.float32, torch.float16)]
)
def test_a_narrowing_cast_while_merged_resets_within_its_rounding_and_says_so(start, end, config, undo):
    """The merged weight lost bits: reset inverts what is there (up to the new dtype's rounding), with a warning,
    and never leaves the model stuck merged."""
    model = model_with(config, names=("a",)).to(start)
    expected = {k: v.to(end) for k, v in base_weights(model).items()}
    model.merge_adapter("a")
    merged = {k: v.float() for k, v in base_weights(model).items()}
    # a subnormal W' (a tiny (IA)^3 scale, fp16) keeps too few bits to invert; at merge time the steps had them
    tiny = max(torch.finfo(start).smallest_normal, torch.finfo(end).smallest_normal)
    normal = {k: (v == 0) | (v.abs() >= tiny) for k, v in merged.items()}
    for t in undos(model):  # DoRA: W' = scale * (W + dW) per row; the rounding of W' is divided by it on reset
        if t.restore["scale"] is not None:
            merged[f"{t.path}.weight"] /= t.restore["scale"].float().abs().unsqueeze(1)
    model.to(end)
    with pytest.warns(UserWarning, match=r"\['a'\].*not bit for bit"):
        getattr(model, undo)(*{"set_active_adapters": [None], "delete_adapter": ["a"]}.get(undo, []))
    assert not undos(model)
    after = base_weights(model)
    for key in after.keys() & expected.keys():
        got, want = after[key], expected[key]
        assert got.dtype == end
        rounding = torch.finfo(end).eps * (merged[key].abs() + 2 * want.float().abs()) + 1e-6  # of W' and of W
        assert ((got.float() - want.float()).abs() <= rounding)[normal[key]].all(), key


def test_a_round_trip_cast_while_merged_is_not_claimed_bit_exact():
    """fp32 -> bf16 -> fp32 gives back the merge dtype but not the merged weight: reset says it is not exact."""
    model = model_with(FULL_LORA, names=("a",))
    expected = base_weights(model)
    model.merge_adapter("a")
    model.to(torch.bfloat16).to(torch.float32)
    with pytest.warns(UserWarning, match="not bit for bit"):
        model.reset_adapter()
    assert all(torch.allclose(base_weights(model)[k], v, atol=2e-2) for k, v in expected.items())


def test_the_merged_weight_fingerprint_is_chunk_free_and_sees_one_ulp():
    from workbench.core.methods.exact_undo import _fingerprint

    weight = torch.randn(37, 11)
    assert _fingerprint(weight, chunk=5) == _fingerprint(weight)
    moved = weight.clone()
    moved[20, 3] = torch.nextafter(moved[20, 3], torch.tensor(9.0))
    assert _fingerprint(moved) != _fingerprint(weight)


def test_save_pretrained_after_a_cast_while_merged_saves_the_original_in_the_new_dtype(tmp_path):
    model = model_with(FULL_LORA, names=("a",)).to(torch.bfloat16)
    before = {k: v.float() for k, v in base_weights(model).items() if k.startswith("bert.")}
    model.merge_adapter("a")
    model.to(torch.float32)
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(saved[k.removeprefix("bert.")], v) for k, v in before.items())
    assert undos(model)  # saving leaves the merge in place


def test_merge_refuses_while_skip_layers_skips_a_layer_the_adapter_adapts():
    """Merged weights run in every layer: merging under skip_layers would silently change the output (the adapters
    library does), so it is refused, and the model is unchanged."""
    model = model_with(FULL_LORA, names=("a",))
    model.set_active_adapters("a", skip_layers=[0])
    before = snapshot(model)
    with pytest.raises(AdapterConfigError, match=r"skip_layers=\[0\] skips layer\(s\) \[0\]"):
        model.merge_adapter("a")
    assert_unchanged(model, before)
    assert not undos(model)


def test_merge_under_skip_layers_of_layers_the_adapter_leaves_out_runs_the_same():
    model = model_with(LoRAConfig(leave_out=[0], init_weights="bert"), names=("a",))
    model.eval().set_active_adapters("a", skip_layers=[0])
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        unmerged = model(input_ids=ids)[0]
        model.merge_adapter("a")
        torch.testing.assert_close(model(input_ids=ids)[0], unmerged)


def test_a_merged_adapter_refuses_a_call_that_skips_its_layers():
    model = model_with(FULL_LORA, names=("a",))
    model.set_active_adapters("a")
    model.merge_adapter("a")
    model._engine.skip_layers = {1}  # set behind set_active_adapters' back (which would reset the merge)
    with pytest.raises(workbench.CompositionError, match="cannot skip layers"):
        model(input_ids=torch.tensor([[5, 6, 7]]))


def test_a_failed_merge_leaves_no_projection_merged(monkeypatch):
    model = model_with(FULL_LORA, names=("a",))
    before = base_weights(model)
    targets = list(model._engine.methods["lora"].targets.values())
    original = type(targets[0]).merge

    def failing(self, name):
        if self is targets[3]:
            raise RuntimeError("out of memory")
        original(self, name)

    monkeypatch.setattr(type(targets[0]), "merge", failing)
    with pytest.raises(RuntimeError):
        model.merge_adapter("a")
    assert not undos(model)
    assert_bit_exact(model, before)


def test_save_pretrained_while_merged_saves_the_original_weights(tmp_path):
    model = model_with(FULL_LORA, names=("a",))
    before = {k: v for k, v in base_weights(model).items() if k.startswith("bert.")}
    model.merge_adapter("a")
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "model.safetensors"))
    assert before and saved.keys() == {k.removeprefix("bert.") for k in before}
    assert all(torch.equal(saved[k.removeprefix("bert.")], v) for k, v in before.items())
