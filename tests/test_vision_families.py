"""ViT and BEiT: adapters on image models (inputs `pixel_values`), on AutoAdapterModel and on `init()`-ed models.

Each allowed method changes the output, trains and saves/loads bit-exactly; image classification heads give a loss;
Parallel and BatchSplit give each channel its own adapter and head; text-only methods are refused at add time with
the model unchanged. Conformance with the `adapters` library (outputs and files) is in tests/test_conformance.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModel, ViTForImageClassification

import workbench
from workbench.core.errors import HeadError, UnsupportedMethodError, UnsupportedModelError
from workbench.core.keys import from_file_keys, to_file_keys

SIZES = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
FAMILIES = {  # name -> (model type, config overrides)
    "vit": ("vit", {}),
    "beit": ("beit", {}),
    "beit-relpos": ("beit", {"use_relative_position_bias": True}),  # relative position bias in every layer
}
METHODS = [
    "seq_bn",
    "double_seq_bn",
    "par_bn",
    "compacter[reduction_factor=8]",
    "lora[intermediate_lora=True,output_lora=True]",
    "ia3",
    "prefix_tuning[prefix_length=4,bottleneck_size=16]",
    "prompt_tuning[prompt_length=4]",
    "loreft[prefix_positions=2,suffix_positions=2]",
]
PROMPT = METHODS[7]


def config_of(family: str, **overrides):
    model_type, extra = FAMILIES[family]
    return AutoConfig.for_model(model_type, **SIZES, intermediate_size=37, **extra, **overrides)


def pixels(rows: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


LABELS = torch.tensor([0, 2, 1, 2])


def adapter_model(family: str, **overrides) -> workbench.AdapterModel:
    torch.manual_seed(0)
    return workbench.AutoAdapterModel.from_config(config_of(family, **overrides)).eval()


def perturb(model, name: str, std: float = 0.3) -> None:
    """Move an adapter away from its (often identity) init, so that it visibly acts. LoReFT's orthogonal projection
    is left as it is (noise on its parametrization can make it zero, and with it every gradient)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, param in model._engine.named_parameters_of(name):
            if "parametrizations" not in key:
                param.add_(torch.randn(param.shape, generator=gen) * std)


# Every method on ViT; on BEiT those whose place differs from ViT's (its sites hook `drop_path`, its heads read the
# pooler) and, with relative position bias, those that meet the attention.
BEIT_METHODS = [m for m in METHODS if m.split("[")[0] in ("seq_bn", "lora", "prefix_tuning", "prompt_tuning", "loreft")]
RELPOS_METHODS = [m for m in METHODS if m.split("[")[0] in ("seq_bn", "lora", "ia3", "prefix_tuning", "loreft")]


def cases():
    for family, methods in (("vit", METHODS), ("beit", BEIT_METHODS), ("beit-relpos", RELPOS_METHODS)):
        for method in methods:
            yield pytest.param(family, method, id=f"{family}-{method.split('[')[0]}")


@pytest.mark.parametrize(("family", "method"), list(cases()))
def test_method_changes_output_trains_and_reloads_bit_exactly(tmp_path, family, method):
    model = adapter_model(family)
    base_weights = copy.deepcopy(model.state_dict())
    x = pixels()
    with torch.no_grad():
        base = model(pixel_values=x).last_hidden_state

    model.add_adapter("a", config=method)
    model.add_image_classification_head("a", num_labels=3)
    perturb(model, "a")
    model.set_active_adapters("a")
    model.active_head = None
    with torch.no_grad():
        adapted = model(pixel_values=x).last_hidden_state
    tail = adapted[:, -base.shape[1] :]  # prompt tuning puts its prompt in front
    assert not torch.allclose(tail, base, atol=1e-4), f"{method} does not change the output"

    model.active_head = "a"
    model.train_adapter("a")
    model.heads["a"].requires_grad_(False)  # only the adapter trains: the loss falls by its doing alone
    trained = [p for _, p in model._engine.named_parameters_of("a") if p.requires_grad]
    # Adam without weight decay: decay would move the fixed diagonal of LoReFT's Householder parametrization
    optimizer = torch.optim.Adam(trained, lr=3e-2)
    model.eval()  # no dropout
    images = x + LABELS[:, None, None, None]  # a label-dependent brightness to learn from
    losses = []
    for _ in range(6):
        loss = model(pixel_values=images, labels=LABELS).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), f"the loss does not go down: {losses}"

    model.save_adapter(tmp_path / "a", "a")
    with torch.no_grad():
        want = model(pixel_values=x)
    fresh = adapter_model(family)
    fresh.load_state_dict(base_weights)
    fresh.load_adapter(tmp_path / "a", set_active=True)
    assert fresh.active_head == "a"
    with torch.no_grad():
        got = fresh(pixel_values=x)
    assert torch.equal(got.logits, want.logits)


def test_adapter_files_use_adapterhub_module_names(tmp_path):
    """transformers 5 renamed ViT's modules; the files keep the names of AdapterHub's (transformers 4) models."""
    model = adapter_model("vit")
    model.add_adapter("a", config="seq_bn[mh_adapter=True]")
    model.add_adapter("b", config="lora[intermediate_lora=True,output_lora=True]")
    model.add_adapter("p", config="prefix_tuning[bottleneck_size=8]")
    keys = {}
    for name in ("a", "b", "p"):
        model.save_adapter(tmp_path / name, name, with_head=False)
        keys[name] = set(torch.load(tmp_path / name / "pytorch_adapter.bin", weights_only=True))
    assert "vit.encoder.layer.0.attention_adapters.adapters.a.adapter_up.weight" in keys["a"]
    assert "vit.encoder.layer.1.output.output_adapters.adapters.a.adapter_up.weight" in keys["a"]
    for path in ("attention.attention.query", "attention.attention.value", "intermediate.dense", "output.dense"):
        assert f"vit.encoder.layer.0.{path}.loras.b.lora_A" in keys["b"]
    assert "vit.prefix_tuning.prefix_tunings.p.self_prefix.wte.weight" in keys["p"]
    assert (
        "vit.encoder.layer.1.attention.attention.prefix_tuning.pool.prefix_tunings.p.self_prefix.wte.weight"
        in keys["p"]
    )
    assert not any(".layers." in k or ".mlp." in k or "q_proj" in k for ks in keys.values() for k in ks)


def test_file_key_renames_stop_at_the_adapter_name():
    """An adapter named like a module path ("layers", "mlp") keeps its name in both directions."""
    pairs = (
        ("layers", "encoder.layer"),
        ("mlp.fc1", "intermediate.dense"),
        ("output_adapters", "output.output_adapters"),
    )
    ours = {
        "vit.layers.0.mlp.fc1.loras.layers.lora_A": 0,
        "layers.1.output_adapters.adapters.mlp.adapter_up.weight": 1,
        "shared_parameters.layers.phm_rule": 2,
    }
    theirs = to_file_keys(ours, pairs)
    assert set(theirs) == {
        "vit.encoder.layer.0.intermediate.dense.loras.layers.lora_A",
        "encoder.layer.1.output.output_adapters.adapters.mlp.adapter_up.weight",
        "shared_parameters.layers.phm_rule",
    }
    assert from_file_keys(theirs, pairs) == ours


@pytest.mark.parametrize("family", ["vit", "beit-relpos"])
@pytest.mark.parametrize("method", ["seq_bn", "lora", "prefix_tuning[prefix_length=3,bottleneck_size=8]"])
def test_parallel_and_batchsplit_run_each_adapter_with_its_head(family, method):
    """Parallel replicates pixel_values (given by keyword) and each channel equals its adapter and head alone; the
    loss is the sum of the heads' losses. (The adapters library refuses Parallel on BEiT; workbench runs it.)"""
    model = adapter_model(family)
    for name, labels in (("a", 2), ("b", 3)):
        model.add_adapter(name, config=method)
        model.add_image_classification_head(name, num_labels=labels)
        perturb(model, name)
    x, labels = pixels(3), torch.tensor([1, 0, 1])
    alone = {}
    with torch.no_grad():
        for name in ("a", "b"):
            model.set_active_adapters(name)
            alone[name] = model(pixel_values=x, labels=labels)
        model.set_active_adapters(workbench.Parallel("a", "b"))
        assert model.active_head == ["a", "b"]
        out = model(pixel_values=x, labels=labels)
    assert len(out.head_outputs) == 2
    for part, name in zip(out.head_outputs, ("a", "b"), strict=True):
        assert torch.allclose(part.logits, alone[name].logits, atol=1e-5)
    assert torch.allclose(out.loss, alone["a"].loss + alone["b"].loss, atol=1e-5)

    with torch.no_grad():
        model.set_active_adapters(workbench.BatchSplit("a", "b", batch_sizes=[1, 2]))
        split = model(x)  # positionally: the first argument is the image model's pixel_values
    assert torch.allclose(split.head_outputs[0].logits, alone["a"].logits[:1], atol=1e-5)
    assert torch.allclose(split.head_outputs[1].logits, alone["b"].logits[1:], atol=1e-5)


def test_image_classification_head_losses_and_config():
    model = adapter_model("vit")
    model.add_adapter("a")
    model.set_active_adapters("a")
    model.add_image_classification_head("a", num_labels=3, id2label={0: "cat", 1: "dog", 2: "bird"})
    head = model.heads["a"]
    assert head.config == {
        "head_type": "image_classification",
        "num_labels": 3,
        "layers": 1,
        "activation_function": "tanh",
        "multilabel": False,
        "label2id": {"cat": 0, "dog": 1, "bird": 2},
        "use_pooler": False,
        "bias": True,
        "dropout_prob": None,
    }
    x = pixels()
    with torch.no_grad():
        out = model(pixel_values=x, labels=LABELS)
        cls = model.vit(pixel_values=x).last_hidden_state[:, 0]  # ViT reads [CLS]
    assert torch.allclose(out.logits, head.run(cls), atol=1e-6)
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(out.logits, LABELS))
    model.add_image_classification_head("m", num_labels=3, multilabel=True)
    targets = torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]])
    with torch.no_grad():
        multi = model(pixel_values=x, labels=targets)
    assert torch.allclose(multi.loss, torch.nn.functional.binary_cross_entropy_with_logits(multi.logits, targets))
    with pytest.raises(HeadError, match="classification"):  # text heads are not an image model's
        model.add_classification_head("c")


def test_beit_heads_read_the_pooler_output():
    """AdapterHub's BEiT heads always read the pooler (mean of the patch tokens, normed), whatever `use_pooler`."""
    model = adapter_model("beit")
    model.add_image_classification_head("a", num_labels=3)
    x = pixels()
    with torch.no_grad():
        out = model(pixel_values=x)
        pooled = model.beit(pixel_values=x).pooler_output
    assert torch.allclose(out.logits, model.heads["a"].run(pooled), atol=1e-6)


def test_invertible_adapters_are_refused_with_the_model_unchanged():
    model = adapter_model("vit")
    keys = set(model.state_dict())
    with pytest.raises(UnsupportedMethodError, match="pixel_values.*token embeddings"):
        model.add_adapter("inv", config="seq_bn_inv")
    assert set(model.state_dict()) == keys and not model.adapters_config.adapters


def test_prompt_tuning_is_refused_with_relative_position_bias():
    model = adapter_model("beit-relpos")
    keys = set(model.state_dict())
    with pytest.raises(UnsupportedMethodError, match=r"use_relative_position_bias=True\): BEiT's relative position"):
        model.add_adapter("p", config="prompt_tuning")
    assert set(model.state_dict()) == keys and not model.adapters_config.adapters
    shared = adapter_model("beit", use_shared_relative_position_bias=True)
    with pytest.raises(UnsupportedMethodError, match="use_shared_relative_position_bias"):
        shared.add_adapter("p", config="prompt_tuning")


def test_named_embeddings_are_refused_on_image_models(tmp_path):
    model = adapter_model("vit")
    with pytest.raises(UnsupportedModelError, match="pixel_values"):
        model.load_embeddings(tmp_path, "other")
    with pytest.raises(UnsupportedModelError, match="pixel_values"):
        model.save_embeddings(tmp_path, "default")


def test_prefix_slots_get_no_relative_position_bias():
    """With a zero bias table, BEiT with relative position bias computes what BEiT without it does, prefixes
    included: the prefix columns of the bias are zeros, and the patch columns are the layers' own bias."""
    with_bias = adapter_model("beit-relpos")
    without = adapter_model("beit")
    state = with_bias.state_dict()
    assert not without.load_state_dict(state, strict=False).missing_keys
    for model in (with_bias, without):
        model.add_adapter("p", config="prefix_tuning[prefix_length=3,bottleneck_size=8]")
        model.set_active_adapters("p")
    without.load_state_dict(with_bias.state_dict(), strict=False)
    perturb(with_bias, "p")
    perturb(without, "p")
    x = pixels(2)
    with torch.no_grad():
        assert torch.allclose(with_bias(x).last_hidden_state, without(x).last_hidden_state, atol=1e-5)
        for name, param in with_bias.named_parameters():
            if "relative_position_bias_table" in name:
                param.normal_(std=1.0, generator=torch.Generator().manual_seed(3))
        assert not torch.allclose(with_bias(x).last_hidden_state, without(x).last_hidden_state, atol=1e-3)


def test_init_vit_task_model_trains_and_round_trips_with_its_static_head(tmp_path):
    """`init()` on ViTForImageClassification: pixel_values and labels in, the task model's loss out; the classifier is
    saved as AdapterHub's static head, reloads bit-exactly and converts to an equal flex head."""
    config = config_of("vit", num_labels=3)
    torch.manual_seed(0)
    model = workbench.init(ViTForImageClassification(config).eval())
    base = copy.deepcopy(model.state_dict())
    model.add_adapter("a", config="lora")
    model.train_adapter("a")
    x = pixels()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.eval()
    losses = []
    for _ in range(10):
        loss = model(pixel_values=x, labels=LABELS).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    model.save_adapter(tmp_path / "a", "a")  # with the classifier as a static head
    with torch.no_grad():
        want = model(pixel_values=x).logits

    torch.manual_seed(0)
    again = workbench.init(ViTForImageClassification(config).eval())
    again.load_state_dict(base)
    again.load_adapter(tmp_path / "a", set_active=True)
    with torch.no_grad():
        assert torch.equal(again(pixel_values=x).logits, want)

    flex = adapter_model("vit", num_labels=3)
    flex.vit.load_state_dict(
        {k.removeprefix("vit."): v for k, v in model.state_dict().items() if k.startswith("vit.")}, strict=False
    )  # noqa: E501
    flex.load_adapter(tmp_path / "a", load_as="a", set_active=True)
    assert flex.heads["a"].config["head_type"] == "image_classification"
    with torch.no_grad():
        assert torch.allclose(flex(pixel_values=x).logits, want, atol=1e-6)


def test_init_base_model_takes_pixel_values():
    torch.manual_seed(0)
    model = workbench.init(AutoModel.from_config(config_of("vit")).eval())
    x = pixels(2)
    with torch.no_grad():
        base = model(pixel_values=x).last_hidden_state
    alone = {}
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
        perturb(model, name)
        model.set_active_adapters(name)
        with torch.no_grad():
            alone[name] = model(pixel_values=x).last_hidden_state
        assert not torch.allclose(alone[name], base, atol=1e-4)
    model.set_active_adapters(workbench.Parallel("a", "b"))
    with torch.no_grad():
        out = model(pixel_values=x).last_hidden_state
    assert out.shape == (4, *base.shape[1:]), "Parallel replicates pixel_values"
    assert torch.allclose(out[:2], alone["a"], atol=1e-5) and torch.allclose(out[2:], alone["b"], atol=1e-5)


def test_adapter_trainer_keeps_pixel_values_columns(tmp_path):
    """Trainer drops data columns the model's forward does not name; an AdapterModel takes pixel_values through
    its base model, so AdapterTrainer keeps them (else the model would get no images)."""
    from transformers import TrainingArguments

    model = adapter_model("beit")
    model.add_adapter("a", config="lora")
    model.add_image_classification_head("a", num_labels=3)
    model.train_adapter("a")
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    x = pixels(8, seed=5) + labels[:, None, None, None]
    data = [{"pixel_values": x[i], "labels": labels[i], "note": "not an input"} for i in range(8)]

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            return model(pixel_values=x, labels=labels).loss.item()

    before = loss()
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=3, learning_rate=1e-2,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, logging_strategy="no",
    )  # fmt: skip
    workbench.AdapterTrainer(model=model, args=args, train_dataset=data).train()
    assert loss() < before - 0.05
