"""Biaffine dependency parsing head, in AdapterHub's `dependency_parsing` head format.

The parser of Glavaš & Vulić, "Is Supervised Syntactic Parsing Beneficial for Language Understanding? An Empirical
Investigation" (EACL 2021, https://arxiv.org/abs/2008.06788), with the biaffine scorer of Dozat & Manning
(https://arxiv.org/abs/1611.01734): word vectors (the mean of each word's subword vectors) are scored against every
candidate head word (the [CLS] vector stands for the root) for arcs, and per relation label for relations.

Files: `head_config.json` with `{"head_type": "dependency_parsing", "num_labels", "label2id"}` and the weights
`heads.<name>.biaffine_arcs.weight` (1, hidden+1, hidden) and `heads.<name>.biaffine_rels.weight`
(num_labels, hidden+1, hidden+1), as the `adapters` library writes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .heads import BuiltinHead, _dropout_prob, _model_config
from .transformers_api import ModelOutput


@dataclass
class DependencyParsingOutput(ModelOutput):
    """Arc scores (batch, words, words + 1) and relation scores (batch, words, words + 1, num_labels)."""

    loss: torch.Tensor | None = None
    rel_preds: torch.Tensor | None = None
    arc_preds: torch.Tensor | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


class Biaffine(nn.Module):
    """`s[b, o, x, y] = [x_b; 1?] W_o [y_b; 1?]^T`: a bilinear score per output channel, bias by a constant 1 input."""

    def __init__(self, n_in: int, n_out: int = 1, bias_x: bool = True, bias_y: bool = True):
        super().__init__()
        self.n_in, self.n_out, self.bias_x, self.bias_y = n_in, n_out, bias_x, bias_y
        self.weight = nn.Parameter(torch.zeros(n_out, n_in + bias_x, n_in + bias_y))

    def extra_repr(self) -> str:
        return f"n_in={self.n_in}, n_out={self.n_out}, bias_x={self.bias_x}, bias_y={self.bias_y}"

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.bias_x:
            x = torch.cat((x, torch.ones_like(x[..., :1])), -1)
        if self.bias_y:
            y = torch.cat((y, torch.ones_like(y[..., :1])), -1)
        return torch.einsum("bxi,oij,byj->boxy", x, self.weight, y)


class BiaffineParsingHead(BuiltinHead):
    """`add_dependency_parsing_head(name, num_labels)`; forward takes `word_starts` (the first subword of each word,
    then the end, padded with the pad id), `labels_arcs` and `labels_rels` (padded with the pad id)."""

    head_type = "dependency_parsing"
    defaults = {"num_labels": 2, "label2id": None}
    arg_order = ("num_labels", "id2label")

    def build(self, model) -> None:
        config = _model_config(model)
        hidden, labels = config.hidden_size, self.config["num_labels"]
        if not isinstance(labels, int) or isinstance(labels, bool) or labels < 1:
            from .errors import HeadError

            raise HeadError(f"dependency_parsing head: num_labels={labels!r} must be an integer >= 1")
        self.pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0
        self.biaffine_arcs = Biaffine(hidden, 1, bias_x=True, bias_y=False)
        self.biaffine_rels = Biaffine(hidden, labels, bias_x=True, bias_y=True)
        self.dropout = nn.Dropout(_dropout_prob(config, self.config))
        if isinstance(model, nn.Module):
            self.train(model.training)

    def get_label_names(self) -> list[str]:
        return ["labels_arcs", "labels_rels"]

    def forward(
        self,
        outputs,
        cls_output=None,
        attention_mask=None,
        return_dict=True,
        word_starts=None,
        labels_arcs=None,
        labels_rels=None,
        **kwargs,
    ):
        if word_starts is None:
            from .errors import HeadError

            raise HeadError("the dependency parsing head needs word_starts= (each word's first subword position)")
        hidden = self.dropout(outputs[0])
        words = self._word_vectors(hidden, word_starts)
        candidates = torch.cat([hidden[:, :1], words], dim=1)  # position 0: the root, represented by [CLS]
        arc_preds = self.biaffine_arcs(words, candidates).squeeze(1)
        rel_preds = self.biaffine_rels(words, candidates).permute(0, 2, 3, 1)
        loss = self._loss(arc_preds, rel_preds, labels_arcs, labels_rels)
        return DependencyParsingOutput(
            loss=loss,
            rel_preds=rel_preds,
            arc_preds=arc_preds,
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )

    def _word_vectors(self, hidden: torch.Tensor, word_starts: torch.Tensor) -> torch.Tensor:
        """Each word's mean subword vector, words left-aligned and zero-padded to the sequence length."""
        batch, length, size = hidden.shape
        words = hidden.new_zeros(batch, length, size)
        for i in range(batch):
            starts = word_starts[i][word_starts[i] != self.pad_token_id].tolist()
            for j in range(len(starts) - 1):
                if starts[j + 1] <= 0:
                    break
                words[i, j] = hidden[i, starts[j] : starts[j + 1]].mean(0)
        return words

    def _loss(self, arc_preds, rel_preds, labels_arcs, labels_rels):
        if labels_arcs is None or labels_rels is None:
            return None
        mask = labels_arcs != self.pad_token_id
        arcs = labels_arcs[mask]
        loss = F.cross_entropy(arc_preds[mask], arcs)
        rel_scores = rel_preds[mask][torch.arange(len(arcs), device=arcs.device), arcs]
        return loss + F.cross_entropy(rel_scores, labels_rels[mask])
