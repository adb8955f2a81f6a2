"""Every bad argument or file value raises an AdapterError naming the file, key and value, and changes nothing.

Each case also snapshots the model before and after (weights, adapters, heads, active setup and head, attention).
"""

import json
import math

import pytest
import test_errors
import torch
from tiny import tiny_adapter_model

from workbench import (
    ADAPTER_CONFIG_MAP,
    AdapterConfig,
    AdapterConfigError,
    AdapterError,
    AdapterFusionConfig,
    AdapterLoadError,
    HeadError,
    SeqBnConfig,
)
from workbench.core import files
from workbench.core.configs import ADAPTERFUSION_CONFIG_MAP
from workbench.core.errors import AdapterNameError
from workbench.core.heads import head_from_config
from workbench.core.methods.activations import activation
from workbench.core.names import RESERVED, check_fusion_name, check_name

DYNAMIC = ADAPTERFUSION_CONFIG_MAP["dynamic"].to_dict()
saved = test_errors.saved  # the fixture: a model's adapter "a" (seq_bn) and head "a" saved to tmp_path/a


# --- snapshots ----------------------------------------------------------------------------------------------


def snapshot(model):
    """test_errors' snapshot (weights, adapters, heads) plus what else a failed call could leave changed."""
    extras = (
        list(model.heads),
        repr(model.active_adapters),
        model.active_head,
        model.adapter_fusions,
        model.config._attn_implementation,
    )
    return test_errors.snapshot(model), extras


def assert_unchanged(model, before):
    state, extras = before
    test_errors.assert_unchanged(model, state)
    assert snapshot(model)[1] == extras


def assert_names(error, *needles):
    """The message names every needle (file, key, repr of the value)."""
    message = str(error)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


@pytest.fixture
def model():
    """A model with something to lose: two adapters, a LoRA pair, a head, an active setup."""
    model = tiny_adapter_model()
    for name in ("x", "y"):
        model.add_adapter(name, config="seq_bn")
    for name in ("l1", "l2"):
        model.add_adapter(name, config="lora")
    model.add_classification_head("x", num_labels=2)
    model.set_active_adapters("x")
    return model


def set_json(path, dotted_key, value):
    """Set the dotted key `a.b` to `value` in a JSON file."""
    data = json.loads(path.read_text())
    *parents, last = dotted_key.split(".")
    target = data
    for part in parents:
        target = target[part]
    target[last] = value
    path.write_text(json.dumps(data))


# --- bad arguments through the public API -------------------------------------------------------------------


def _add(config):
    return lambda m: m.add_adapter("new", config=config)


CODE_CASES = [
    pytest.param(_add("seq_bn[reduction_factor=0]"), "reduction_factor", 0, id="reduction_factor=0"),
    pytest.param(_add("seq_bn[reduction_factor=-2]"), "reduction_factor", -2, id="reduction_factor<0"),
    pytest.param(_add("seq_bn[reduction_factor=True]"), "reduction_factor", True, id="reduction_factor=True"),
    pytest.param(
        _add({**SeqBnConfig().to_dict(), "reduction_factor": math.nan}), "reduction_factor", math.nan, id="rf=nan"
    ),
    pytest.param(
        _add({**SeqBnConfig().to_dict(), "reduction_factor": math.inf}), "reduction_factor", math.inf, id="rf=inf"
    ),
    pytest.param(
        _add("seq_bn[reduction_factor={'1': 0, 'default': 16}]"),
        "reduction_factor",
        {"1": 0, "default": 16},
        id="reduction_factor-layer-0",
    ),
    pytest.param(_add("seq_bn[reduction_factor={'x': 4}]"), "reduction_factor", {"x": 4}, id="reduction_factor-key"),
    pytest.param(_add("seq_bn[reduction_factor={}]"), "reduction_factor", {}, id="reduction_factor-empty"),
    pytest.param(
        _add("seq_bn_inv[inv_adapter_reduction_factor=0]"), "inv_adapter_reduction_factor", 0, id="inv-factor=0"
    ),
    pytest.param(_add({**ADAPTER_CONFIG_MAP["par_bn"].to_dict(), "scaling": math.inf}), "scaling", math.inf, id="inf"),
    pytest.param(_add("lora[r=0]"), "r", 0, id="lora-r=0"),
    pytest.param(_add({"architecture": "lora", "alpha": math.inf}), "alpha", math.inf, id="lora-alpha=inf"),
    pytest.param(_add("seq_bn[dropout=1.0]"), "dropout", 1.0, id="dropout=1"),
    pytest.param(_add("lora[dropout=-0.1]"), "dropout", -0.1, id="lora-dropout<0"),
    pytest.param(_add("prefix_tuning[dropout=1.5]"), "dropout", 1.5, id="prefix-dropout>1"),
    pytest.param(_add("prefix_tuning[prefix_length=0]"), "prefix_length", 0, id="prefix_length=0"),
    pytest.param(_add("prefix_tuning[bottleneck_size=0]"), "bottleneck_size", 0, id="bottleneck_size=0"),
    pytest.param(_add("prompt_tuning[prompt_length=0]"), "prompt_length", 0, id="prompt_length=0"),
    pytest.param(_add("seq_bn[leave_out=[-1]]"), "leave_out", [-1], id="leave_out=[-1]"),
    pytest.param(_add("seq_bn[leave_out='all']"), "leave_out", "all", id="leave_out=str"),
    pytest.param(_add("lora[leave_out=[True]]"), "leave_out", [True], id="leave_out=[True]"),
    pytest.param(_add("compacter[phm_dim=0]"), "phm_dim", 0, id="phm_dim=0"),
    pytest.param(_add("seq_bn[non_linearity='nope']"), "non_linearity", "nope", id="non_linearity"),
    pytest.param(_add("prefix_tuning[non_linearity='nope']"), "non_linearity", "nope", id="prefix-non_linearity"),
    pytest.param(_add("lora[attn_matrices=5]"), "attn_matrices", 5, id="attn_matrices=5"),
    pytest.param(_add("lora[dtype='float33']"), "dtype", "float33", id="lora-dtype"),
    pytest.param(_add("seq_bn[1:2]"), "options", "seq_bn[1:2]", id="unparsable-options"),
    pytest.param(
        lambda m: m.average_adapter("avg", ["l1", "l2"], combine_strategy="lora_delta_w_svd", svd_rank=0),
        "r",
        0,
        id="average-svd_rank=0",
    ),
    pytest.param(lambda m: m.add_classification_head("h", num_labels=-1), "num_labels", -1, id="num_labels=-1"),
    pytest.param(lambda m: m.add_classification_head("h", num_labels=0), "num_labels", 0, id="num_labels=0"),
    pytest.param(lambda m: m.add_classification_head("h", num_labels=2.5), "num_labels", 2.5, id="num_labels=2.5"),
    pytest.param(lambda m: m.add_classification_head("h", num_labels=True), "num_labels", True, id="num_labels=True"),
    pytest.param(lambda m: m.add_classification_head("h", layers=0), "layers", 0, id="head-layers=0"),
    pytest.param(
        lambda m: m.add_classification_head("h", activation_function="nope"),
        "activation_function",
        "nope",
        id="head-activation",
    ),
    pytest.param(
        lambda m: m.add_classification_head("h", id2label={"x": "a", "y": "b"}),
        "id2label",
        {"x": "a", "y": "b"},
        id="id2label-ids",
    ),
    pytest.param(
        lambda m: m.add_classification_head("h", id2label=["a", "b"]), "id2label", ["a", "b"], id="id2label-list"
    ),
    pytest.param(
        lambda m: m.add_classification_head("h", id2label={0: "a", 1: "a"}),
        "id2label",
        {0: "a", 1: "a"},
        id="id2label-duplicate-labels",
    ),
    pytest.param(lambda m: m.add_multiple_choice_head("h", num_choices=0), "num_choices", 0, id="num_choices=0"),
    pytest.param(lambda m: m.add_tagging_head("h", num_labels=-3), "num_labels", -3, id="tagging-num_labels"),
    pytest.param(lambda m: m.add_qa_head("h", layers=-1), "layers", -1, id="qa-layers"),
    pytest.param(lambda m: m.add_masked_lm_head("h", layers=0), "layers", 0, id="masked_lm-layers"),
    pytest.param(
        lambda m: m.add_adapter_fusion(["x", "y"], config={**DYNAMIC, "key": "yes"}), "key", "yes", id="fusion-key"
    ),
    pytest.param(
        lambda m: m.add_adapter_fusion(["x", "y"], config={**DYNAMIC, "dropout_prob": 1.5}),
        "dropout_prob",
        1.5,
        id="fusion-dropout_prob",
    ),
    pytest.param(
        lambda m: m.add_adapter_fusion(["x", "y"], config={**DYNAMIC, "dropout_prob": math.nan}),
        "dropout_prob",
        math.nan,
        id="fusion-dropout_prob=nan",
    ),
    pytest.param(lambda m: m.add_adapter("a.b"), "name", "a.b", id="name-dot"),
    pytest.param(lambda m: m.add_adapter(""), "name", "", id="name-empty"),
    pytest.param(lambda m: m.add_adapter("/tmp/x"), "name", "/tmp/x", id="name-path"),
    pytest.param(lambda m: m.add_adapter("training"), "name", "training", id="name-training"),
    pytest.param(lambda m: m.add_adapter("to"), "name", "to", id="name-to"),
    pytest.param(lambda m: m.add_adapter(" a"), "name", " a", id="name-leading-space"),
    pytest.param(lambda m: m.add_adapter("a|b"), "name", "a|b", id="name-pipe"),
    pytest.param(lambda m: m.add_classification_head("h.x"), "name", "h.x", id="head-name-dot"),
    pytest.param(lambda m: m.add_classification_head("forward"), "name", "forward", id="head-name-forward"),
    pytest.param(lambda m: m.add_adapter_fusion(["x", "y"], name="../f"), "name", "../f", id="fusion-name"),
    pytest.param(
        _add(SeqBnConfig(reduction_factor={"0": 2})), "reduction_factor", {"0": 2}, id="reduction_factor-no-default"
    ),
]


@pytest.mark.parametrize("call, key, value", CODE_CASES)
def test_bad_argument_is_refused_and_changes_nothing(model, call, key, value):
    before = snapshot(model)
    with pytest.raises(AdapterError) as caught:
        call(model)
    assert_names(caught.value, key, repr(value))
    assert_unchanged(model, before)


def test_unknown_activation_lists_the_known_ones():
    with pytest.raises(AdapterConfigError, match="'nope'") as caught:
        activation("nope")
    assert_names(caught.value, "relu", "gelu", "swish", "leakyrelu", "tanh")
    with pytest.raises(AdapterConfigError):
        activation(5)
    assert activation("ReLU") is not None and activation("LeakyReLU") is not None


# --- bad values in saved files ------------------------------------------------------------------------------


def bad_file(file, key, value, shown=None, **kwargs):
    """A file case: set `key` (dotted) to `value` in `file`; the error must name the key and value (or `shown`)."""
    needles = (shown,) if shown else (key.rsplit(".", 1)[-1], repr(value))
    return pytest.param(file, key, value, needles, **kwargs)


LORA = ADAPTER_CONFIG_MAP["lora"].to_dict()
PREFIX = ADAPTER_CONFIG_MAP["prefix_tuning"].to_dict()

ADAPTER_FILE_CASES = [
    bad_file(files.CONFIG_NAME, "config", None, id="config=null"),
    bad_file(files.CONFIG_NAME, "config", [1], id="config=list"),
    bad_file(files.CONFIG_NAME, "config.reduction_factor", 0, id="reduction_factor=0"),
    bad_file(files.CONFIG_NAME, "config.reduction_factor", math.nan, id="reduction_factor=NaN"),
    bad_file(files.CONFIG_NAME, "config.reduction_factor", {"1": -1}, id="reduction_factor-layer"),
    bad_file(files.CONFIG_NAME, "config.non_linearity", "nope", id="non_linearity"),
    bad_file(files.CONFIG_NAME, "config.dropout", 1.5, id="dropout"),
    bad_file(files.CONFIG_NAME, "config.leave_out", [-1], id="leave_out"),
    bad_file(files.CONFIG_NAME, "config.phm_dim", 0, id="phm_dim"),
    bad_file(files.CONFIG_NAME, "config", {**LORA, "r": 0}, "r=0", id="lora-r"),
    bad_file(files.CONFIG_NAME, "config", {**PREFIX, "prefix_length": 0}, "prefix_length=0", id="prefix_length"),
    bad_file(files.CONFIG_NAME, "config", {**PREFIX, "architecture": 7}, "architecture=7", id="architecture"),
    bad_file(files.CONFIG_NAME, "model_type", 123, id="model_type=123"),
    bad_file(files.CONFIG_NAME, "hidden_size", -1, id="hidden_size=-1"),
    bad_file(files.CONFIG_NAME, "hidden_size", "32", id="hidden_size=str"),
    bad_file(files.CONFIG_NAME, "version", 3, id="version=3"),
    bad_file(files.CONFIG_NAME, "name", "/tmp/evil", id="name-absolute"),
    bad_file(files.CONFIG_NAME, "name", "../x", id="name-parent"),
    bad_file(files.CONFIG_NAME, "name", "a.b", id="name-dot"),
    bad_file(files.CONFIG_NAME, "name", "training", id="name-training"),
    bad_file(files.HEAD_CONFIG_NAME, "config.num_labels", -1, id="head-num_labels=-1"),
    bad_file(files.HEAD_CONFIG_NAME, "config.num_labels", 0, id="head-num_labels=0"),
    bad_file(files.HEAD_CONFIG_NAME, "config.layers", 0, id="head-layers"),
    bad_file(files.HEAD_CONFIG_NAME, "config.activation_function", "nope", id="head-activation"),
    bad_file(files.HEAD_CONFIG_NAME, "config.label2id", {"a": 0, "b": 0}, id="head-label2id-duplicate"),
    bad_file(files.HEAD_CONFIG_NAME, "config.label2id", {"a": 0, "b": 7}, id="head-label2id-range"),
    bad_file(files.HEAD_CONFIG_NAME, "config.label2id", {"a": "0"}, id="head-label2id-str"),
    bad_file(files.HEAD_CONFIG_NAME, "config.label2id", [0, 1], id="head-label2id-list"),
    bad_file(files.HEAD_CONFIG_NAME, "config.dropout_prob", 1.5, id="head-dropout_prob"),
    bad_file(files.HEAD_CONFIG_NAME, "config.use_pooler", "yes", id="head-use_pooler"),
    bad_file(files.HEAD_CONFIG_NAME, "config", None, id="head-config=null"),
    bad_file(files.HEAD_CONFIG_NAME, "model_type", 123, id="head-model_type"),
    bad_file(files.HEAD_CONFIG_NAME, "name", "/tmp/evil", id="head-name"),
]


@pytest.mark.parametrize("file, key, value, needles", ADAPTER_FILE_CASES)
def test_bad_value_in_a_saved_adapter_is_refused_and_changes_nothing(model, saved, file, key, value, needles):
    path = saved / file
    set_json(path, key, value)
    before = snapshot(model)
    with pytest.raises(AdapterError) as caught:
        model.load_adapter(str(saved))
    assert_names(caught.value, str(path), *needles)
    assert_unchanged(model, before)


FUSION_FILE_CASES = [
    pytest.param("config", None, id="config=null"),
    pytest.param("config.key", "yes", id="key=yes"),
    pytest.param("config.dropout_prob", 1.5, id="dropout_prob"),
    pytest.param("config.temperature", 1, id="temperature=1"),
    pytest.param("adapter_names", ["a", "../x"], id="adapter_names-path"),
    pytest.param("adapter_names", "a,b", id="adapter_names-str"),
    pytest.param("adapter_names", [], id="adapter_names-empty"),
    pytest.param("name", "x/y", id="name-path"),
    pytest.param("model_type", 123, id="model_type"),
    pytest.param("version", 1.3, id="version"),
]


@pytest.mark.parametrize("key, value", FUSION_FILE_CASES)
def test_bad_value_in_a_saved_fusion_is_refused_and_changes_nothing(fusion_folder, key, value):
    model, folder = fusion_folder
    path = folder / files.ADAPTERFUSION_CONFIG_NAME
    set_json(path, key, value)
    before = snapshot(model)
    with pytest.raises(AdapterError) as caught:
        model.load_adapter_fusion(folder)
    shown = repr(value[-1]) if isinstance(value, list) and value else repr(value)  # a list: its bad element
    assert_names(caught.value, str(path), key.rsplit(".", 1)[-1], shown)
    assert_unchanged(model, before)


@pytest.mark.parametrize("file", [files.CONFIG_NAME, files.HEAD_CONFIG_NAME])
def test_a_config_file_that_is_not_utf8_is_refused(model, saved, file):
    path = saved / file
    path.write_bytes(b'{"name": "\xff\xfe"}')
    before = snapshot(model)
    with pytest.raises(AdapterLoadError, match="not UTF-8") as caught:
        model.load_adapter(str(saved))
    assert_names(caught.value, str(path))
    assert_unchanged(model, before)


# --- names.py -----------------------------------------------------------------------------------------------

GOOD_NAMES = ["a", "sst-2", "task_1", "A-b_9", "x" * 100, "mlm", "pfeiffer"]
GOOD_NAMES += ["pfeiffer+inv", "a b", "lora[r=4, alpha=8]", "é", "a@ukp"]  # AdapterHub code names adapters freely
BAD_NAMES = [
    ("", "empty"),
    ("x" * 101, "101 characters"),
    ("a.b", "ModuleDict"),
    ("/tmp/evil", "path"),
    ("../x", "path"),
    ("..", "path"),
    ("a\\b", "path"),
    ("~x", "path"),
    ("C:\\x", "path"),
    (" a", "whitespace"),
    ("a\tb", "control"),
    ("a\x00b", "control"),
    ("a|b", "contains"),
    ("a:b", "contains"),
    ("_x", "reserved"),
    ("_modules", "reserved"),
    *[(n, "reserved") for n in ("training", "forward", "to", "cuda", "parameters", "keys", "items", "update")],
    *[(n, "reserved") for n in ("pop", "values", "state_dict", "train", "eval")],
    (None, "string"),
    (5, "string"),
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_valid_names_pass(name):
    assert check_name(name) == name
    assert check_name(name, "head") == name
    assert check_fusion_name(name) == name


@pytest.mark.parametrize("name, reason", BAD_NAMES)
def test_invalid_names_are_refused_with_the_reason(name, reason):
    with pytest.raises(AdapterNameError) as caught:
        check_name(name, "head", where="/p/head_config.json")
    assert_names(caught.value, f"invalid head name {name!r} in /p/head_config.json", reason)
    assert isinstance(caught.value, AdapterConfigError)


def test_reserved_names_are_torch_attributes():
    assert {"training", "_modules", "forward", "keys", "add_module"} <= RESERVED


@pytest.mark.parametrize("name", ["a,b", "a,b,c", "fusion", "sst-2,mnli"])
def test_valid_fusion_names(name):
    assert check_fusion_name(name) == name


@pytest.mark.parametrize("name", ["a,../x", "a,,b", "a,", "a.b,c", "training", "x/y", ",a"])
def test_invalid_fusion_names(name):
    with pytest.raises(AdapterNameError) as caught:
        check_fusion_name(name, where="f.json")
    assert_names(caught.value, "f.json")


# --- files.read_saved_meta ----------------------------------------------------------------------------------

META_CASES = [
    ("adapter", "config", None),
    ("adapter", "config", "seq_bn"),
    ("adapter", "model_type", 123),
    ("adapter", "model_name", ["x"]),
    ("adapter", "hidden_size", -1),
    ("adapter", "hidden_size", 0),
    ("adapter", "hidden_size", "32"),
    ("adapter", "hidden_size", True),
    ("adapter", "hidden_size", 32.0),
    ("adapter", "version", 3),
    ("adapter", "name", "/tmp/evil"),
    ("adapter", "name", "../x"),
    ("adapter", "name", "a.b"),
    ("adapter", "name", "training"),
    ("adapter", "name", ""),
    ("adapter", "name", 7),
    ("head", "name", "h.x"),
    ("head", "config", []),
    ("fusion", "adapter_names", []),
    ("fusion", "adapter_names", "a,b"),
    ("fusion", "adapter_names", ["a", "a"]),
    ("fusion", "adapter_names", ["a", "../x"]),
    ("fusion", "adapter_names", ["a", None]),
    ("fusion", "name", "a,../x"),
    ("fusion", "name", "x.y"),
]
META_FILES = {"adapter": files.CONFIG_NAME, "head": files.HEAD_CONFIG_NAME, "fusion": files.ADAPTERFUSION_CONFIG_NAME}


def write_meta(tmp_path, kind, **changes):
    data = {
        "config": {"head_type": "classification"} if kind == "head" else {},
        "hidden_size": 32,
        "model_class": "BertAdapterModel",
        "model_name": "",
        "model_type": "bert",
        "name": "a,b" if kind == "fusion" else "a",
        "version": "adapters.1.3.0",
        **({"adapter_names": ["a", "b"]} if kind == "fusion" else {}),
        **changes,
    }
    path = tmp_path / META_FILES[kind]
    path.write_text(json.dumps(data))
    return path, data


@pytest.mark.parametrize("kind", list(META_FILES))
def test_read_saved_meta_returns_a_good_file(tmp_path, kind):
    path, data = write_meta(tmp_path, kind)
    assert files.read_saved_meta(path, kind) == data
    path, data = write_meta(tmp_path, kind, name=None, model_type=None, hidden_size=None)
    if kind != "fusion":
        assert files.read_saved_meta(path, kind) == data


def test_read_saved_meta_reads_real_saved_files(saved):
    assert files.read_saved_meta(saved / files.CONFIG_NAME, "adapter")["name"] == "a"
    assert files.read_saved_meta(saved / files.HEAD_CONFIG_NAME, "head")["config"]["num_labels"] == 2


def test_read_saved_meta_reads_a_real_fusion_file(fusion_folder):
    _, folder = fusion_folder
    assert files.read_saved_meta(folder / files.ADAPTERFUSION_CONFIG_NAME, "fusion")["adapter_names"] == ["a", "b"]


@pytest.mark.parametrize("kind, key, value", META_CASES)
def test_read_saved_meta_refuses_bad_values(tmp_path, kind, key, value):
    path, _ = write_meta(tmp_path, kind, **{key: value})
    with pytest.raises(AdapterLoadError) as caught:
        files.read_saved_meta(path, kind)
    shown = "'../x'" if value == ["a", "../x"] else "None" if value == ["a", None] else repr(value)
    assert_names(caught.value, str(path), key if key != "name" or kind != "fusion" else "name", shown)


def test_read_saved_meta_needs_config_and_fusion_names(tmp_path):
    path, data = write_meta(tmp_path, "adapter")
    del data["config"]
    path.write_text(json.dumps(data))
    with pytest.raises(AdapterLoadError, match="'config'"):
        files.read_saved_meta(path, "adapter")
    path, data = write_meta(tmp_path, "fusion", name=None, adapter_names=None)
    with pytest.raises(AdapterLoadError, match="adapter_names"):
        files.read_saved_meta(path, "fusion")
    path.write_bytes(b"\xff")
    with pytest.raises(AdapterLoadError, match="not UTF-8"):
        files.read_saved_meta(path, "fusion")
    with pytest.raises(AdapterConfigError, match="kind"):
        files.read_saved_meta(path, "nonsense")


# --- configs and heads directly -----------------------------------------------------------------------------


def test_every_preset_stays_valid():
    for name, config in {**ADAPTER_CONFIG_MAP, **ADAPTERFUSION_CONFIG_MAP}.items():
        if name in ADAPTERFUSION_CONFIG_MAP:
            assert AdapterFusionConfig.load(name) == AdapterFusionConfig.load(config.to_dict()) == config
        else:
            assert AdapterConfig.load(name) == AdapterConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("data", [None, [1], "not json", 3])
def test_config_from_a_non_mapping_names_the_source(data):
    with pytest.raises(AdapterConfigError) as caught:
        AdapterConfig.from_dict(data, source="some/adapter_config.json")
    assert_names(caught.value, "some/adapter_config.json", "config", repr(data))


def test_config_file_that_is_not_utf8_or_has_null_config(tmp_path):
    path = tmp_path / "adapter_config.json"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(AdapterLoadError, match="not UTF-8"):
        AdapterConfig.load(str(path))
    with pytest.raises(AdapterLoadError, match="not UTF-8"):
        AdapterFusionConfig.load(str(path))
    path.write_text('{"config": null}')
    with pytest.raises(AdapterConfigError, match="config=None") as caught:
        AdapterConfig.load(str(path))
    assert_names(caught.value, str(path))


def test_direct_construction_and_replace_are_checked():
    with pytest.raises(AdapterConfigError, match="reduction_factor=0"):
        SeqBnConfig(reduction_factor=0)
    with pytest.raises(AdapterConfigError, match="r=0"):
        ADAPTER_CONFIG_MAP["lora"].replace(r=0)
    with pytest.raises(AdapterConfigError, match="dropout_prob=-0.5"):
        AdapterFusionConfig.load("dynamic", dropout_prob=-0.5)
    with pytest.raises(AdapterConfigError, match="key='yes'"):
        AdapterFusionConfig.load({**DYNAMIC, "key": "yes"}, dropout_prob=0.1)
    assert SeqBnConfig(reduction_factor={"0": 2, "default": 0.5}).reduction_factor == {"0": 2, "default": 0.5}


@pytest.mark.parametrize(
    "config, key",
    [
        (None, "config"),
        ({"head_type": "masked_lm", "vocab_size": 0}, "vocab_size"),
        ({"head_type": "causal_lm", "vocab_size": "10"}, "vocab_size"),  # missing: the model's, as AdapterHub
        ({"head_type": "masked_lm", "vocab_size": 10, "embedding_size": -1}, "embedding_size"),
        ({"head_type": "classification", "dropout_prob": 1.5}, "dropout_prob"),
        ({"head_type": "classification", "dropout_prob": "0.1"}, "dropout_prob"),
        ({"head_type": "classification", "bias": None}, "bias"),
        ({"head_type": "multiple_choice", "num_choices": 2, "label2id": {"a": 2}}, "label2id"),
    ],
)
def test_head_options_are_checked(config, key):
    model = tiny_adapter_model()
    with pytest.raises(HeadError) as caught:
        head_from_config(model.config, config)
    assert_names(caught.value, key)


@pytest.mark.parametrize(
    "value, message",
    [(float("nan"), "NaN or infinite"), (float("inf"), "NaN or infinite"), ("int", "not floating point")],
)
def test_weights_that_are_not_finite_floats_are_refused(model, saved, value, message):
    path = saved / files.WEIGHTS_NAME
    weights = files.read_weights(path)
    key = next(iter(weights))
    weights[key] = weights[key].long() if value == "int" else torch.full_like(weights[key], value)
    files.write_weights(path, weights)
    before = snapshot(model)
    with pytest.raises(AdapterLoadError, match=message) as caught:
        model.load_adapter(str(saved), load_as="fresh")
    assert_names(caught.value, str(path), key.rsplit(".a.", 1)[-1])  # the key, under the name it loads as
    assert_unchanged(model, before)


def test_a_reduction_factor_that_would_allocate_a_huge_adapter_is_refused(model):
    before = snapshot(model)
    with pytest.raises(AdapterConfigError, match="bottleneck for hidden size"):
        model.add_adapter("huge", config="seq_bn[reduction_factor=0.0001]")
    with pytest.raises(AdapterConfigError, match="dtype='int64'"):
        model.add_adapter("int", config="lora[dtype='int64']")
    assert_unchanged(model, before)


def test_a_head_file_whose_sizes_disagree_with_its_weights_allocates_nothing(model, saved):
    """Sizes are checked against the weights file on the meta device, before a head is built."""
    set_json(saved / files.HEAD_CONFIG_NAME, "config.num_labels", 10**8)
    set_json(saved / files.HEAD_CONFIG_NAME, "config.label2id", None)
    before = snapshot(model)
    with pytest.raises(AdapterLoadError, match="shape"):
        model.load_head(str(saved), load_as="big")
    assert_unchanged(model, before)
    set_json(saved / files.HEAD_CONFIG_NAME, "config.layers", 10**9)
    with pytest.raises(HeadError, match="at most 64"):
        model.load_head(str(saved), load_as="deep")
    assert_unchanged(model, before)


def test_a_fusion_file_whose_name_and_adapters_disagree_is_refused(fusion_folder):
    model, folder = fusion_folder
    path = folder / files.ADAPTERFUSION_CONFIG_NAME
    data = json.loads(path.read_text())
    set_json(path, "adapter_names", data["adapter_names"][:1])
    set_json(path, "name", ",".join(data["adapter_names"]))
    before = snapshot(model)
    with pytest.raises(AdapterLoadError, match="disagree"):
        model.load_adapter_fusion(folder)
    assert_unchanged(model, before)
