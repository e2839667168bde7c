"""The Seq2Set network: a source encoder (frozen token states or the paper's BiGRU), a GRU decoder with additive
attention, and one label embedding table used both as the decoder's input embeddings and its output layer.

Following OTSeq2Set (Cao et al., Sec. 3.1; reference caojie54/OTSeq2Set ``model/rnn.py``: ``rnn_encoder``,
``rnn_decoder`` with Bahdanau attention, ``StackedGRU``): the decoder state starts from ``tanh(W h_enc)``, each
step attends over the source with the previous state, feeds ``[input embedding; context]`` to a GRU cell and
scores labels from ``[state; context; input embedding]``. The output layer is factorised as
``feature . e_label + b_label`` with ``e_label`` initialised from the catalogue's label text vectors, so that a step
can be scored against any subset of columns: all labels (the paper's full softmax) or a per-query shortlist (the
extreme-label extension). The table has rows ``0..L-1`` (labels), ``L`` (the empty/end token) and ``L+1`` (start).

Decoding (:meth:`Seq2SetNet.decode`) is student forcing as the reference trains OTSeq2Set
(``teacher_forcing_ratio: 0``): each step's argmax token is the next input; with ``teacher`` rows given it is
MLC2Seq's teacher forcing instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

MASKED = -1e4  # logit of a padded shortlist column


class Seq2SetNet(nn.Module):
    """See the module docstring; ``config`` (JSON) rebuilds the same architecture from a predictor folder."""

    def __init__(self, labels: int, label_dim: int, source_dim: int, hidden: int = 256, source: str = "frozen",
                 vocabulary: int = 0, dropout: float = 0.2) -> None:
        super().__init__()
        self.config: dict[str, Any] = {"labels": labels, "label_dim": label_dim, "source_dim": source_dim,
                                       "hidden": hidden, "source": source, "vocabulary": vocabulary,
                                       "dropout": dropout}
        self.n_labels, self.hidden, self.source = labels, hidden, source
        self.empty, self.start = labels, labels + 1
        self.table = nn.Parameter(torch.randn(labels + 2, label_dim) * 0.02)
        self.bias = nn.Parameter(torch.zeros(labels + 1))
        context = 2 * hidden
        if source == "bigru":
            self.words = nn.Embedding(vocabulary, source_dim, padding_idx=0)
            self.rnn = nn.GRU(source_dim, hidden, batch_first=True, bidirectional=True)
        else:
            self.project = nn.Linear(source_dim, context)
        self.initial = nn.Linear(context, hidden)
        self.attend_state = nn.Linear(hidden, hidden, bias=False)
        self.attend_source = nn.Linear(context, hidden)
        self.attend_score = nn.Linear(hidden, 1, bias=False)
        self.cell = nn.GRUCell(label_dim + context, hidden)
        self.out = nn.Linear(hidden + context + label_dim, label_dim)
        self.pool = nn.Linear(context, label_dim)  # the BCE head's query vector
        self.dropout = nn.Dropout(dropout)

    def initialise(self, label_vectors: np.ndarray, words: np.ndarray | None = None) -> None:
        """Label rows from the catalogue's text vectors; the BiGRU's word vectors from the encoder's input
        embeddings (the paper initialises both from GloVe)."""
        with torch.no_grad():
            self.table[: self.n_labels] = torch.from_numpy(np.asarray(label_vectors, dtype=np.float32))
            if words is not None and self.source == "bigru":
                self.words.weight.copy_(torch.from_numpy(np.asarray(words, dtype=np.float32)))

    # ---- source ----------------------------------------------------------------------------------------------------
    def encode(self, source: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source states ``(b, N, 2h)`` (token states projected, or the BiGRU over token ids) and the masked mean."""
        if self.source == "bigru":
            lengths = mask.sum(dim=1).clamp_min(1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(self.dropout(self.words(source)), lengths, batch_first=True,
                                                       enforce_sorted=False)
            states, _ = self.rnn(packed)
            states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True, total_length=source.shape[1])
        else:
            states = torch.tanh(self.project(self.dropout(source.float())))
        weights = mask.float()[:, :, None]
        mean = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)
        return states, mean

    # ---- decoder ---------------------------------------------------------------------------------------------------
    def columns(self, shortlist: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Output embeddings of the scored columns: ``(L+1, d)`` (all labels, then empty) without a shortlist, else
        ``(b, S+1, d)`` for shortlist rows ``(b, S)`` (padding -1) with the empty column appended; and the bias."""
        if shortlist is None:
            return self.table[: self.n_labels + 1], self.bias
        rows = torch.cat([shortlist, torch.full_like(shortlist[:, :1], self.empty)], dim=1)
        return self.table[rows.clamp_min(0)], self.bias[rows.clamp_min(0)]

    def logits(self, feature: torch.Tensor, shortlist: torch.Tensor | None,
               columns: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Step scores ``(b, C)`` of ``feature`` ``(b, d)``; ``columns`` (from :meth:`columns`) is gathered once per
        decode, so a shortlisted step costs ``O(b S d)`` and never touches the other labels."""
        embeddings, bias = columns if columns is not None else self.columns(shortlist)
        if shortlist is None:
            return feature @ embeddings.T + bias
        scores = torch.einsum("bd,bcd->bc", feature, embeddings) + bias
        padded = torch.cat([shortlist < 0, torch.zeros_like(shortlist[:, :1], dtype=torch.bool)], dim=1)
        return scores.masked_fill(padded, MASKED)

    def decode(self, source: torch.Tensor, mask: torch.Tensor, steps: int, shortlist: torch.Tensor | None = None,
               teacher: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probabilities ``(b, steps, C)`` over the columns; the next input is the step's argmax token (student
        forcing) or, with ``teacher`` (table rows ``(b, steps)``, the gold sequence), the gold token."""
        states, mean = self.encode(source, mask)
        keys = self.attend_source(states)
        invalid = ~mask.bool()
        state = torch.tanh(self.initial(mean))
        token = torch.full((len(source),), self.start, dtype=torch.long, device=source.device)
        columns = self.columns(shortlist)
        outputs = []
        for step in range(steps):
            embedding = self.dropout(self.table[token])
            scores = self.attend_score(torch.tanh(keys + self.attend_state(state)[:, None, :])).squeeze(2)
            attention = torch.softmax(scores.masked_fill(invalid, MASKED), dim=1)
            context = torch.bmm(attention[:, None, :], states).squeeze(1)
            state = self.cell(torch.cat([embedding, context], dim=1), state)
            feature = self.out(self.dropout(torch.cat([state, context, embedding], dim=1)))
            log_probs = torch.log_softmax(self.logits(feature, shortlist, columns), dim=1)
            outputs.append(log_probs)
            if teacher is not None:
                token = teacher[:, step]
            else:
                choice = log_probs.argmax(dim=1)
                token = choice if shortlist is None else self.column_rows(shortlist).gather(1, choice[:, None])[:, 0]
        return torch.stack(outputs, dim=1)

    def column_rows(self, shortlist: torch.Tensor | None) -> torch.Tensor | None:
        """Table row of each column (shortlist rows then the empty row), None for the full softmax (column = row)."""
        if shortlist is None:
            return None
        return torch.cat([shortlist.clamp_min(0), torch.full_like(shortlist[:, :1], self.empty)], dim=1)

    # ---- the BCE head on the same encoder (a baseline) --------------------------------------------------------------
    def head(self, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The query vector ``(b, d + 1)`` a one-vs-all head scores against :meth:`head_labels` (the trailing 1
        meets the label's bias, so the head is a plain inner product)."""
        _, mean = self.encode(source, mask)
        query = self.pool(self.dropout(mean))
        return torch.cat([query, torch.ones_like(query[:, :1])], dim=1)

    def head_labels(self, rows: torch.Tensor) -> torch.Tensor:
        """Label vectors with their bias appended, ``rows.shape + (d + 1,)``; rows -1 (padding) read row 0."""
        rows = rows.clamp_min(0)
        return torch.cat([self.table[rows], self.bias[rows][..., None]], dim=-1)
