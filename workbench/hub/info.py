"""`AdapterInfo`: what a listing says about one adapter, from either source, in AdapterHub's field names."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

from .families import model_type_of


@dataclass
class AdapterInfo:
    """One adapter in a listing. The first eight fields are AdapterHub's; the rest help a person browsing."""

    source: str  # "ah" (the archived AdapterHub index) or "hf" (the Hugging Face Hub)
    adapter_id: str
    model_name: str | None = None
    task: str | None = None
    subtask: str | None = None
    username: str | None = None
    adapter_config: dict | None = None
    sha1_checksum: str | None = None
    method: str | None = None  # e.g. "seq_bn", "lora", derived from the config
    library: str = "adapters"  # "adapters" (AdapterHub format) or "peft"
    downloads: int | None = None
    likes: int | None = None
    last_modified: datetime | None = None
    tags: list[str] = field(default_factory=list)
    size_bytes: int | None = None
    hf_repo: str | None = None  # where the files are downloaded from
    files: dict[str, int | None] = field(default_factory=dict)  # file name -> size in bytes (None: not listed)
    model_type: str | None = None  # the base model's family (transformers model_type, e.g. "bert", "mbart")

    def __post_init__(self):
        if self.model_type is None:  # listings cached before the field existed, or sources that only name the model
            self.model_type = model_type_of(self.model_name)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["last_modified"] = self.last_modified.isoformat() if self.last_modified else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> AdapterInfo:
        data = dict(data)
        if data.get("last_modified"):
            data["last_modified"] = datetime.fromisoformat(data["last_modified"])
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
