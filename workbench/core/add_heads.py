"""AdapterHub's `add_<type>_head` methods of an AdapterModel: each builds one head type with its options.

A mixin, so `adapter_model.py` keeps the model itself; every method ends in `AdapterModel._add_head`, which checks
the family's head types, the name and the labels.
"""

from __future__ import annotations

from .errors import HeadError


class AddHeadMethods:
    """`add_classification_head`, `add_tagging_head`, ..., `add_seq2seq_lm_head`."""

    def add_classification_head(
        self,
        head_name: str,
        num_labels: int = 2,
        layers: int = 2,
        activation_function: str = "tanh",
        overwrite_ok: bool = False,
        multilabel: bool = False,
        id2label=None,
        use_pooler: bool = False,
        set_active: bool = True,
    ) -> None:
        self._add_head(
            "multilabel_classification" if multilabel else "classification",
            head_name,
            overwrite_ok,
            set_active,
            num_labels=num_labels,
            layers=layers,
            activation_function=activation_function,
            id2label=id2label,
            use_pooler=use_pooler,
        )

    def add_image_classification_head(
        self,
        head_name: str,
        num_labels: int = 2,
        layers: int = 1,
        activation_function: str = "tanh",
        overwrite_ok: bool = False,
        multilabel: bool = False,
        id2label=None,
        use_pooler: bool = False,
        set_active: bool = True,
    ) -> None:
        """A classification head on an image model (ViT: the [CLS] token, or its pooler with `use_pooler`; BEiT:
        always its pooler, the mean of the patch tokens). Called with `pixel_values` and `labels`."""
        self._add_head(
            "image_classification",
            head_name,
            overwrite_ok,
            set_active,
            num_labels=num_labels,
            layers=layers,
            activation_function=activation_function,
            multilabel=multilabel,
            id2label=id2label,
            use_pooler=use_pooler,
        )

    def add_tagging_head(
        self,
        head_name: str,
        num_labels: int = 2,
        layers: int = 1,
        activation_function: str = "tanh",
        overwrite_ok: bool = False,
        id2label=None,
        set_active: bool = True,
    ) -> None:
        self._add_head(
            "tagging",
            head_name,
            overwrite_ok,
            set_active,
            num_labels=num_labels,
            layers=layers,
            activation_function=activation_function,
            id2label=id2label,
        )

    def add_multiple_choice_head(
        self,
        head_name: str,
        num_choices: int = 2,
        layers: int = 2,
        activation_function: str = "tanh",
        overwrite_ok: bool = False,
        id2label=None,
        use_pooler: bool = False,
        set_active: bool = True,
    ) -> None:
        self._add_head(
            "multiple_choice",
            head_name,
            overwrite_ok,
            set_active,
            num_choices=num_choices,
            layers=layers,
            activation_function=activation_function,
            id2label=id2label,
            use_pooler=use_pooler,
        )

    def add_qa_head(
        self,
        head_name: str,
        num_labels: int = 2,
        layers: int = 1,
        activation_function: str = "tanh",
        overwrite_ok: bool = False,
        id2label=None,
        set_active: bool = True,
    ) -> None:
        self._add_head(
            "question_answering",
            head_name,
            overwrite_ok,
            set_active,
            num_labels=num_labels,
            layers=layers,
            activation_function=activation_function,
            id2label=id2label,
        )

    def add_dependency_parsing_head(
        self, head_name: str, num_labels: int = 2, overwrite_ok: bool = False, id2label=None, set_active: bool = True
    ) -> None:
        """A biaffine dependency parsing head (Glavaš & Vulić 2021; `workbench.core.dependency_parsing`)."""
        self._add_head(
            "dependency_parsing", head_name, overwrite_ok, set_active, num_labels=num_labels, id2label=id2label
        )

    def add_masked_lm_head(
        self,
        head_name: str,
        activation_function: str = "gelu",
        layers: int = 2,
        overwrite_ok: bool = False,
        set_active: bool = True,
    ) -> None:
        self._add_lm_head(
            "masked_lm", head_name, activation_function, layers, overwrite_ok, set_active, layer_norm=True, bias=True
        )

    def add_causal_lm_head(
        self,
        head_name: str,
        activation_function: str = "gelu",
        layers: int = 2,
        overwrite_ok: bool = False,
        set_active: bool = True,
    ) -> None:
        self._add_lm_head(
            "causal_lm", head_name, activation_function, layers, overwrite_ok, set_active, layer_norm=True, bias=True
        )

    def add_seq2seq_lm_head(
        self, head_name: str, layers: int = 1, overwrite_ok: bool = False, set_active: bool = True
    ) -> None:
        """A language-model head over the decoder of an encoder-decoder model (`generate()` continues with it)."""
        if not self.config.is_encoder_decoder:
            raise HeadError(f"add_seq2seq_lm_head: {self.config.model_type!r} is not an encoder-decoder model")
        self._add_head(
            "seq2seq_lm", head_name, overwrite_ok, set_active, vocab_size=self.config.vocab_size, layers=layers
        )

    def _add_lm_head(self, kind, head_name, activation_function, layers, overwrite_ok, set_active, **options):
        self._add_head(
            kind,
            head_name,
            overwrite_ok,
            set_active,
            vocab_size=self.config.vocab_size,
            embedding_size=getattr(self.config, "embedding_size", None),
            layers=layers,
            activation_function=activation_function,
            **options,
        )
