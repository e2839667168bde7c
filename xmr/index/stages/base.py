"""Index stages: one candidate stage finds the top labels, zero or more re-rank stages re-score them.

Each stage is a small registered class with its own files in the index folder (listed, and so checksummed, in the
manifest), its own manifest section (``type``, ``role``, ``files`` plus its knobs) and its own query-time knobs. A
stage takes one representation kind (``representation``) and returns scores where higher is better, whatever its
metric. Internal label ids are what candidate stages store; re-rank stages keep data by catalogue row.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from xmr.errors import IndexFolderError, XMRError
from xmr.methods import registrar
from xmr.representations import Representation

STAGES: dict[str, type[Stage]] = {}
S = TypeVar("S", bound="Stage")


def register_stage(type_name: str) -> Callable[[type[Stage]], type[Stage]]:
    """Class decorator: a manifest stage section with ``"type": type_name`` opens with this class."""
    return registrar(STAGES, type_name)


def stage_class(section: dict[str, Any], where: Path | str | None) -> type[Stage]:
    """The registered class of a manifest stage section; an unknown type is an error naming it."""
    type_name = section.get("type")
    if type_name not in STAGES:
        from xmr.methods import import_methods

        import_methods()  # a method's own stages register when its package is imported
    if type_name not in STAGES:
        raise IndexFolderError(f"{where}: unknown index stage {type_name!r}; known: {sorted(STAGES)}")
    return STAGES[type_name]


def stage_for(role: type[S], kind: str) -> type[S]:
    """The default stage of a role (``CandidateStage`` or ``RerankStage``) for a representation kind: the first
    registered one that takes it, after importing the registered methods if none does."""
    from xmr.methods import import_methods

    for attempt in range(2):
        if attempt:
            import_methods()  # a method may bring the stage for its own representation
        for cls in STAGES.values():
            if issubclass(cls, role) and cls.representation == kind and getattr(cls, "default_for_kind", True):
                return cls
    hint = "; use a recipe with rerank: 0" if role is RerankStage else ""
    raise XMRError(f"no {role.role} stage takes {kind!r} representations (known stages: {sorted(STAGES)}){hint}")


class Stage(ABC):
    type_name: ClassVar[str]
    role: ClassVar[str]
    representation: ClassVar[str]  # the representation kind this stage takes
    files: tuple[str, ...] = ()  # its files inside the index folder

    @abstractmethod
    def section(self) -> dict[str, Any]:
        """This stage's manifest section without ``type``/``role``/``files`` (those are added on save)."""

    @abstractmethod
    def write(self, folder: Path) -> None:
        """Write this stage's files into ``folder``."""

    @classmethod
    @abstractmethod
    def open(cls, folder: Path, section: dict[str, Any], spec: dict[str, Any], mmap: bool) -> Stage:
        """Read the stage back from its folder and manifest section (``spec`` is the index's representation)."""

    def knobs(self) -> dict[str, int]:
        """Query-time knobs this stage has, with their current (default) values."""
        return {}

    def info(self) -> dict[str, Any]:
        """What ``xmr info`` shows for this stage."""
        return {"type": self.type_name, **self.section()}


class CandidateStage(Stage):
    """Finds the best ``k`` labels of each query among all labels."""

    role: ClassVar[str] = "candidates"
    default_for_kind: ClassVar[bool] = True

    @classmethod
    @abstractmethod
    def build(cls, labels: Representation, ids: np.ndarray, factory: str, build: dict[str, int],
              train_size: int) -> CandidateStage:
        """A stage holding ``labels`` under internal ``ids``, built from a factory string and build knobs."""

    @abstractmethod
    def search(self, queries: Representation, k: int, knobs: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, scores)`` ``(n, k)``, best first; empty slots have id -1 and score -inf. ``knobs`` apply to this
        call only."""

    @abstractmethod
    def set_knobs(self, knobs: dict[str, int]) -> None:
        """Change the default query-time knobs (unknown ones are an error naming the known ones)."""

    @abstractmethod
    def add(self, labels: Representation, ids: np.ndarray) -> None:
        """Add labels under new internal ids."""

    @abstractmethod
    def remove(self, ids: np.ndarray) -> int:
        """Remove internal ids; returns how many went (UnsupportedOperation where the structure cannot)."""

    @abstractmethod
    def __len__(self) -> int: ...

    @property
    def structure(self) -> str:
        """A one-line description of the data structure (e.g. ``IndexIDMap2>IndexHNSWFlat``)."""
        return self.type_name


class RerankStage(Stage):
    """Re-scores each query's candidates from data it keeps per catalogue row; ``depth`` candidates by default."""

    role: ClassVar[str] = "rerank"
    knob: ClassVar[str]  # the per-call knob that overrides the depth (0 turns the stage off)
    depth: int

    @classmethod
    @abstractmethod
    def build(cls, labels: Representation, depth: int) -> RerankStage:
        """A stage keeping what it needs of ``labels`` (row i = catalogue row i)."""

    @abstractmethod
    def rescore(self, queries: Representation, rows: np.ndarray) -> np.ndarray:
        """Scores ``(n, c)`` of each query against its candidate catalogue rows (-1: empty, scored -inf)."""

    @abstractmethod
    def add(self, labels: Representation) -> None:
        """Append rows for added labels."""

    @abstractmethod
    def keep(self, rows: np.ndarray) -> None:
        """Keep only these catalogue rows (after labels were removed)."""

    @abstractmethod
    def __len__(self) -> int:
        """Catalogue rows this stage holds data for."""

    def knobs(self) -> dict[str, int]:
        return {self.knob: self.depth}

    def rerank(self, queries: Representation, ids: np.ndarray, rows: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Re-score the candidates and keep the best ``k`` (ids, scores, rows)."""
        scores = np.where(rows >= 0, self.rescore(queries, rows), -np.inf).astype(np.float32)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]

        def take(values: np.ndarray) -> np.ndarray:
            return np.take_along_axis(values, order, axis=1)

        return take(ids), take(scores), take(rows)
