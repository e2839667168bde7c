"""A toy method in its own package: binary codes from the signs of a dense encoder's vectors (the simplest hash).

Nothing in xmr names it; it goes through build, save, load, search and evaluate on the shared spine (the
``faiss-binary`` candidate stage). A process that opens one of its index folders finds it through the method
registry (``XMR_METHODS=toy=toy_method``).
"""

from typing import Any

from xmr.encoders import DenseEncoder, Encoder, load_encoder, register_encoder
from xmr.representations import BinaryCodes


@register_encoder("test-sign-hash")
class SignHashEncoder(Encoder):
    """Binary codes = signs of a dense encoder's vectors (the simplest hash); nothing outside this package knows it."""

    representation = BinaryCodes.kind

    def __init__(self, dense: dict[str, Any]) -> None:
        self.dense: DenseEncoder = load_encoder(dense)  # type: ignore[assignment]

    @property
    def dim(self) -> int:
        return self.dense.dim

    def representation_spec(self) -> dict[str, Any]:
        return {"kind": self.representation, "metric": self.metric, "bits": self.dim}

    def encode(self, items, side: str) -> BinaryCodes:
        return BinaryCodes.from_signs(self.dense.encode(items, side).values)

    def config(self) -> dict[str, Any]:
        return {"type": self.type_name, "dense": self.dense.identity()}
