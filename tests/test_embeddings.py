"""Switchable input embeddings (AdapterHub's add/set/save/load/delete_embeddings) on tiny models."""

import pickle

import pytest
import torch
from tiny import tiny_adapter_model, tiny_config
from transformers import AutoModelForSequenceClassification, BertTokenizer

import workbench
from workbench import AdapterConfigError, AdapterLoadError

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "good", "bad", "film"]


def tokenizer(tmp_path, words, name="vocab"):
    roles = {
        "[PAD]": "pad_token",
        "[UNK]": "unk_token",
        "[CLS]": "cls_token",
        "[SEP]": "sep_token",
        "[MASK]": "mask_token",
    }
    kwargs = {role: token for token, role in roles.items() if token in words}
    return BertTokenizer(vocab={w: i for i, w in enumerate(words)}, **kwargs)


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "llama"])
def test_add_switch_and_back(tmp_path, model_type):
    model = tiny_adapter_model(model_type)
    ids = torch.tensor([[1, 2, 3, 4]])
    before = model(input_ids=ids)[0]
    model.add_embeddings("new", tokenizer(tmp_path, WORDS + ["extra"]))
    assert model.active_embeddings == "new"
    assert model.get_input_embeddings().num_embeddings == len(WORDS) + 1 == model.config.vocab_size
    assert not torch.equal(model(input_ids=ids)[0], before)
    model.set_active_embeddings("default")
    assert model.config.vocab_size == 100
    assert torch.equal(model(input_ids=ids)[0], before)
    assert set(model.loaded_embeddings) == {"default", "new"}
    assert model.base_model.loaded_embeddings is model.loaded_embeddings


def test_inactive_embeddings_stay_out_of_the_state_dict(tmp_path):
    model = tiny_adapter_model()
    keys = set(model.state_dict())
    model.add_embeddings("new", tokenizer(tmp_path, WORDS))
    model.set_active_embeddings("default")
    assert set(model.state_dict()) == keys


def test_reference_embedding_copies_shared_tokens(tmp_path):
    model = tiny_adapter_model()
    reference = tokenizer(tmp_path, WORDS, "ref")
    new = tokenizer(tmp_path, ["[PAD]", "film", "other", "hello"], "new")
    model.add_embeddings("new", new, "default", reference)
    default, added = model.loaded_embeddings["default"].weight, model.loaded_embeddings["new"].weight
    assert torch.equal(added[1], default[WORDS.index("film")])
    assert torch.equal(added[3], default[WORDS.index("hello")])
    with pytest.raises(AdapterConfigError, match="together"):
        model.add_embeddings("other", new, "default")


def test_save_load_round_trip(tmp_path):
    model = tiny_adapter_model()
    tok = tokenizer(tmp_path, WORDS)
    model.add_embeddings("new", tok)
    ids = torch.tensor([[2, 5, 6, 3]])
    out = model(input_ids=ids)[0]
    model.save_embeddings(tmp_path / "emb", "new", tokenizer=tok)
    assert (tmp_path / "emb" / "embedding.pt").is_file() and (tmp_path / "emb" / "tokenizer").is_dir()
    loaded_tok = model.load_embeddings(tmp_path / "emb", "again")
    assert model.active_embeddings == "again"
    assert loaded_tok.get_vocab() == tok.get_vocab()
    assert torch.equal(model.loaded_embeddings["new"].weight, model.loaded_embeddings["again"].weight)
    assert torch.equal(model(input_ids=ids)[0], out)
    assert model.load_embeddings(tmp_path / "emb", "third") is not None
    model.save_embeddings(tmp_path / "plain", "default")
    assert model.load_embeddings(tmp_path / "plain", "copy") is None  # no tokenizer saved


def test_load_refuses_pickled_code_and_wrong_sizes(tmp_path):
    model = tiny_adapter_model()
    folder = tmp_path / "bad"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "embedding.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(AdapterLoadError, match="other than tensors|corrupt"):
        model.load_embeddings(folder, "bad")
    torch.save(torch.zeros(5, 7), folder / "embedding.pt")
    with pytest.raises(AdapterLoadError, match="dimension 32"):
        model.load_embeddings(folder, "bad")
    with pytest.raises(AdapterLoadError, match="no embedding"):
        model.load_embeddings(tmp_path / "missing", "bad")
    assert model.active_embeddings == "default" and "bad" not in model.loaded_embeddings


def test_delete_and_name_errors(tmp_path):
    model = tiny_adapter_model()
    tok = tokenizer(tmp_path, WORDS)
    model.add_embeddings("new", tok)
    with pytest.raises(AdapterConfigError, match="already exists"):
        model.add_embeddings("new", tok)
    with pytest.raises(AdapterConfigError, match="invalid embedding name"):
        model.add_embeddings("../x", tok)
    with pytest.raises(AdapterConfigError, match="no embedding named"):
        model.set_active_embeddings("nope")
    with pytest.raises(AdapterConfigError, match="cannot be deleted"):
        model.delete_embeddings("default")
    model.delete_embeddings("new")
    assert model.active_embeddings == "default" and "new" not in model.loaded_embeddings
    assert model.config.vocab_size == 100


def test_train_embeddings_trains_the_active_embedding(tmp_path):
    model = tiny_adapter_model()
    model.add_adapter("a", config="seq_bn")
    model.add_classification_head("a")
    model.add_embeddings("new", tokenizer(tmp_path, WORDS))
    model.train_adapter("a", train_embeddings=True)
    embedding = model.get_input_embeddings()
    assert embedding.weight.requires_grad
    assert not model.base_model.encoder.layer[0].attention.self.query.weight.requires_grad
    loss = model(input_ids=torch.tensor([[2, 5, 3]]), labels=torch.tensor([1])).loss
    loss.backward()
    assert embedding.weight.grad is not None and embedding.weight.grad.abs().sum() > 0


def test_embeddings_on_an_init_model(tmp_path):
    model = workbench.init(AutoModelForSequenceClassification.from_config(tiny_config()).eval())
    model.add_embeddings("new", tokenizer(tmp_path, WORDS))
    assert model.get_input_embeddings().num_embeddings == len(WORDS)
    assert model.bert.loaded_embeddings is model.loaded_embeddings
    model.set_active_embeddings("default")
    assert model.get_input_embeddings().num_embeddings == 100
