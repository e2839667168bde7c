"""The three training objectives of the Seq2Set room, over a decoder's per-step log-probabilities.

* :func:`hungarian_targets` + :class:`OTSeq2SetLoss`: OTSeq2Set (Cao et al., Sec. 3.2-3.3). Gold labels are matched
  to output steps by ``scipy.optimize.linear_sum_assignment`` on the predicted probabilities (maximised, no
  gradient); steps left unmatched are trained towards the empty token, weighted 0.2 in the NLL (``empty_weight``);
  plus ``lambda`` (8 in the reference) times the OT distance of the steps' soft label embeddings to the gold label
  embeddings (:mod:`xmr.seq2set.ot`). Reference: caojie54/OTSeq2Set ``model/loss.py``
  (``dynamic_hungarian_assign`` with ``assign_all_pre=True``, ``DynamicHungarianLossAssignAll``). Since the golds
  are matched, the loss does not depend on the order in which they are listed.
* :class:`TeacherForcingLoss`: MLC2Seq (Nam et al., NeurIPS 2017): a fixed target order (labels by descending
  training frequency, then the end token) and cross-entropy per step under teacher forcing.
* The BCE head uses the spine's :class:`xmr.train.losses.OneVsAllBCELoss`.

Column layout everywhere: a step's log-probabilities are over ``C`` candidate columns whose last column is the
empty (end) token; ``gold`` holds each query's gold columns, padded with -1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as functional
from scipy.optimize import linear_sum_assignment

from xmr.seq2set.ot import ot_distance


def hungarian_targets(log_probs: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Per-step target columns ``(b, T)``: each gold column goes to the step that the assignment maximising the
    summed predicted probability gives it (every step may take any gold: ``assign_all_pre``); other steps get the
    empty column ``C - 1``. More golds than steps: the assignment keeps the ``T`` best matched ones."""
    batch, steps, columns = log_probs.shape
    targets = np.full((batch, steps), columns - 1, dtype=np.int64)
    probabilities = log_probs.detach().exp().cpu().numpy()
    gold_np = gold.cpu().numpy()
    for row in range(batch):
        labels = gold_np[row][gold_np[row] >= 0]
        if len(labels) == 0:
            continue
        step_rows, gold_cols = linear_sum_assignment(probabilities[row][:, labels], maximize=True)
        targets[row, step_rows] = labels[gold_cols]
    return torch.from_numpy(targets).to(log_probs.device)


class OTSeq2SetLoss(torch.nn.Module):
    """Bipartite-matching NLL (empty token weighted ``empty_weight``) + ``lambda_ot`` x OT distance (see module)."""

    def __init__(self, empty_weight: float = 0.2, lambda_ot: float = 8.0, ipot_beta: float = 1.0,
                 ipot_iterations: int = 50) -> None:
        super().__init__()
        self.empty_weight, self.lambda_ot = empty_weight, lambda_ot
        self.ipot_beta, self.ipot_iterations = ipot_beta, ipot_iterations

    def forward(self, log_probs: torch.Tensor, gold: torch.Tensor, column_embeddings: torch.Tensor) -> torch.Tensor:
        """``log_probs`` ``(b, T, C)``; ``gold`` ``(b, G)`` gold columns padded with -1; ``column_embeddings``
        ``(b, C, d)`` or ``(C, d)``: the label embedding of each column (detached here, as in the reference)."""
        log_probs = log_probs.float()
        batch, steps, columns = log_probs.shape
        targets = hungarian_targets(log_probs, gold)
        weight = torch.ones(columns, device=log_probs.device)
        weight[-1] = self.empty_weight  # the empty column is last in every row, shortlisted or not
        loss = functional.nll_loss(log_probs.reshape(-1, columns), targets.reshape(-1), weight=weight)
        if self.lambda_ot > 0:
            embeddings = column_embeddings.detach().float()
            if embeddings.dim() == 2:
                embeddings = embeddings.expand(batch, *embeddings.shape)
            soft = log_probs.exp() @ embeddings  # (b, T, d): each step's expected label embedding
            mask = gold >= 0
            gold_embeddings = torch.gather(embeddings, 1, gold.clamp_min(0)[:, :, None].expand(-1, -1,
                                                                                               embeddings.shape[2]))
            loss = loss + self.lambda_ot * ot_distance(soft, gold_embeddings, mask, self.ipot_beta,
                                                       self.ipot_iterations)
        return loss


class TeacherForcingLoss(torch.nn.Module):
    """MLC2Seq's cross-entropy on a fixed target sequence: ``targets`` ``(b, T)`` columns (the end column after the
    last label, -100 after it: padding ignored)."""

    def forward(self, log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        columns = log_probs.shape[-1]
        return functional.nll_loss(log_probs.float().reshape(-1, columns), targets.reshape(-1), ignore_index=-100)
