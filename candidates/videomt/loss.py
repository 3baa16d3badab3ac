"""VidEoMT training: per-layer (auxiliary) predictions and the Mask2Former-style loss with Hungarian matching.

Per-layer predictions. EoMT supervises the prediction made before each layer of the query stage
(the final norm and heads applied to that layer's input) as well as the final one. For video,
every frame runs the query stage, so the prediction of query layer ``i`` is collected per frame
and concatenated frame-major along dim 0, the layout of the forward outputs (``T * B``).
:func:`auxiliary_predictions` gathers them with forward pre-hooks on the query layers; the model
is not changed and runs its ordinary forward.

The loss, for each prediction ``(masks (F, Q, h, w), classes (F, Q, K + 1))`` against per-frame
targets (``mask_labels[f]``: ``(n_f, H, W)`` binary masks, ``class_labels[f]``: ``(n_f,)`` ints):

1. Matching, per frame, without gradients: a cost ``mask_weight * BCE + class_weight *
   (-p(class)) + dice_weight * dice`` between every query and every target, the masks compared at
   ``num_points`` random points (the same points for all masks of a frame), and the assignment of
   least total cost (``scipy.optimize.linear_sum_assignment``). NaN/Inf costs become the largest
   finite value, so that they are matched last.
2. Mask losses on the matched pairs at ``num_points`` points per mask chosen by uncertainty: of
   ``oversample_ratio * num_points`` random points, the ``importance_sample_ratio`` share with
   logits closest to 0, plus fresh random points: sigmoid cross-entropy (mean over points) and
   dice, each summed over masks and divided by the number of targets (at least 1).
3. Class loss: cross-entropy over all queries, unmatched ones labelled "no object" (index K),
   with class weight ``no_object_weight`` for that label.

Weighted ``class_weight * CE + mask_weight * BCE + dice_weight * dice``, summed over the
predictions. Randomness comes from the global generator, drawn in the order of transformers'
``VideomtLoss`` (per prediction: the matching points of each frame, then the oversampled and the
fresh random points), so that one seed gives both the same points. Deliberate difference: the
random point coordinates are drawn in the predictions' dtype (transformers draws them in the
default dtype, which fails on float64 predictions unless the default dtype is float64 too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.checks import check_int, check_number, check_value

__all__ = ["VidEoMTLoss", "LossTerms", "auxiliary_predictions", "hungarian_match"]

Prediction = tuple[Tensor, Tensor]  # (mask logits (F, Q, h, w), class logits (F, Q, K + 1))


@dataclass
class LossTerms:
    """The total loss and each weighted term, per prediction (``layer_i`` before query layer i, ``final``)."""

    total: Tensor
    terms: dict[str, Tensor]


def auxiliary_predictions(model: nn.Module, pixel_values: Tensor) -> tuple[list[Prediction], tuple]:
    """Run ``model`` (a :class:`candidates.videomt.VidEoMT`) once and return the prediction made
    before each query-stage layer, then the final one, each frame-major ``(T * B, ...)``, and the
    model's output.

    A layer whose attention mask the model predicts itself (masked attention, probability 1)
    contributes that prediction; for the others it is made here, from the layer's input."""
    start = model.config.num_layers - model.config.num_blocks
    per_layer: list[list[Prediction]] = [[] for _ in range(model.config.num_blocks)]
    made: list[Prediction] = []
    predict = model.predict

    def recording_predict(sequence: Tensor) -> Prediction:
        made.append(predict(sequence))
        return made[-1]

    def hook(index: int):
        own = model.config.masked_attention and float(model.attn_mask_probs[index]) == 1.0

        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            per_layer[index].append(made[-1] if own else predict(model.layernorm(args[0])))
        return pre

    handles = [layer.register_forward_pre_hook(hook(i), with_kwargs=True)
               for i, layer in enumerate(model.layers[start:])]
    model.predict = recording_predict  # an instance attribute: the class is untouched
    try:
        output = model(pixel_values)
    finally:
        del model.predict
        for h in handles:
            h.remove()
    predictions = [(torch.cat([m for m, _ in frames]), torch.cat([c for _, c in frames])) for frames in per_layer]
    predictions.append((output.masks_queries_logits, output.class_queries_logits))
    return predictions, output


def _sample(maps: Tensor, points: Tensor) -> Tensor:
    """Bilinear values of ``maps`` (N, 1, h, w) at ``points`` (N, P, 2) in [0, 1]^2 -> (N, P)."""
    grid = 2.0 * points.unsqueeze(2) - 1.0  # (N, P, 1, 2) in [-1, 1]
    return F.grid_sample(maps, grid, align_corners=False).squeeze(3).squeeze(1)


def _pairwise_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """(Q, P) logits, (n, P) targets -> (Q, n) mean sigmoid cross-entropy."""
    points = logits.shape[1]
    positive = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    negative = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (positive / points) @ targets.T + (negative / points) @ (1 - targets).T


def _pairwise_dice(logits: Tensor, targets: Tensor) -> Tensor:
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


@torch.no_grad()
def hungarian_match(masks: Tensor, classes: Tensor, mask_labels: Sequence[Tensor], class_labels: Sequence[Tensor],
                    *, num_points: int, class_weight: float, mask_weight: float,
                    dice_weight: float) -> list[tuple[Tensor, Tensor]]:
    """Per frame, (query indices, target indices) of the least-cost assignment (see the module docstring)."""
    from scipy.optimize import linear_sum_assignment

    out = []
    for f in range(masks.shape[0]):
        probs = classes[f].softmax(-1)
        cost_class = -probs[:, class_labels[f]]
        points = torch.rand(1, num_points, 2, device=masks.device, dtype=masks.dtype)
        target = mask_labels[f].to(masks)[:, None]
        pred = masks[f][:, None]
        target = _sample(target, points.repeat(target.shape[0], 1, 1))
        pred = _sample(pred, points.repeat(pred.shape[0], 1, 1))
        cost = (mask_weight * _pairwise_bce(pred, target) + class_weight * cost_class
                + dice_weight * _pairwise_dice(pred, target))
        top = torch.finfo(cost.dtype).max
        cost = torch.nan_to_num(cost, nan=top, posinf=top, neginf=top)
        rows, cols = linear_sum_assignment(cost.cpu())
        out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return out


class VidEoMTLoss(nn.Module):
    """The training loss of VidEoMT/EoMT (see the module docstring); defaults as upstream."""

    def __init__(self, num_labels: int, *, class_weight: float = 2.0, mask_weight: float = 5.0,
                 dice_weight: float = 5.0, no_object_weight: float = 0.1, num_points: int = 12544,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75) -> None:
        super().__init__()
        for name, value in (("num_labels", num_labels), ("num_points", num_points)):
            check_int(f"VidEoMTLoss {name}", value, minimum=1)
        for name, value in (("class_weight", class_weight), ("mask_weight", mask_weight),
                            ("dice_weight", dice_weight), ("no_object_weight", no_object_weight)):
            check_number(f"VidEoMTLoss {name}", value, minimum=0)
        check_number("VidEoMTLoss oversample_ratio", oversample_ratio, minimum=1)
        share = check_number("VidEoMTLoss importance_sample_ratio", importance_sample_ratio, minimum=0)
        check_value("VidEoMTLoss importance_sample_ratio", share, share <= 1, expected="a share in [0, 1]")
        self.num_labels = num_labels
        self.class_weight, self.mask_weight, self.dice_weight = class_weight, mask_weight, dice_weight
        self.num_points, self.oversample_ratio = num_points, oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        weights = torch.ones(num_labels + 1)
        weights[-1] = no_object_weight
        self.register_buffer("label_weights", weights)

    def forward(self, predictions: Sequence[Prediction], mask_labels: Sequence[Tensor],
                class_labels: Sequence[Tensor]) -> LossTerms:
        """Weighted loss summed over ``predictions`` (auxiliary ones first, the final one last)."""
        self._check(predictions, mask_labels, class_labels)
        terms: dict[str, Tensor] = {}
        for i, (masks, classes) in enumerate(predictions):
            name = "final" if i == len(predictions) - 1 else f"layer_{i}"
            for key, value in self.prediction_terms(masks, classes, mask_labels, class_labels).items():
                terms[f"{key}_{name}"] = value
        return LossTerms(total=sum(terms.values()), terms=terms)

    def prediction_terms(self, masks: Tensor, classes: Tensor, mask_labels: Sequence[Tensor],
                         class_labels: Sequence[Tensor]) -> dict[str, Tensor]:
        """Weighted mask, dice and class terms of one prediction."""
        matches = hungarian_match(masks, classes, mask_labels, class_labels, num_points=self.num_points,
                                  class_weight=self.class_weight, mask_weight=self.mask_weight,
                                  dice_weight=self.dice_weight)
        num_masks = max(float(sum(len(c) for c in class_labels)), 1.0)
        frames = torch.cat([torch.full_like(q, f) for f, (q, _) in enumerate(matches)])
        queries = torch.cat([q for q, _ in matches])
        targets = torch.cat([mask_labels[f].to(masks)[t] for f, (_, t) in enumerate(matches)])
        pred = masks[frames, queries][:, None]
        with torch.no_grad():
            points = self._uncertain_points(pred)
            target_points = _sample(targets[:, None], points)
        logits = _sample(pred, points)
        bce = F.binary_cross_entropy_with_logits(logits, target_points, reduction="none").mean(1).sum() / num_masks
        probs = logits.sigmoid()
        dice = (1 - (2 * (probs * target_points).sum(-1) + 1) / (probs.sum(-1) + target_points.sum(-1) + 1)).sum()
        dice = dice / num_masks
        labels = torch.full(classes.shape[:2], self.num_labels, dtype=torch.int64, device=classes.device)
        labels[frames, queries] = torch.cat([class_labels[f][t] for f, (_, t) in enumerate(matches)]).to(classes.device)
        ce = F.cross_entropy(classes.transpose(1, 2), labels, weight=self.label_weights.to(classes.dtype))
        return {"loss_mask": self.mask_weight * bce, "loss_dice": self.dice_weight * dice,
                "loss_cross_entropy": self.class_weight * ce}

    def _uncertain_points(self, logits: Tensor) -> Tensor:
        """(N, P, 2) points per mask: the most uncertain of the oversampled ones, then fresh random ones."""
        n = logits.shape[0]
        sampled = int(self.num_points * self.oversample_ratio)
        candidates = torch.rand(n, sampled, 2, device=logits.device, dtype=logits.dtype)
        uncertainty = -_sample(logits, candidates).abs()  # (N, sampled)
        uncertain = int(self.importance_sample_ratio * self.num_points)
        chosen = uncertainty.topk(uncertain, dim=1).indices
        points = torch.gather(candidates, 1, chosen[..., None].expand(-1, -1, 2))
        fresh = self.num_points - uncertain
        if fresh > 0:
            points = torch.cat([points, torch.rand(n, fresh, 2, device=logits.device, dtype=logits.dtype)], dim=1)
        return points

    def _check(self, predictions: Sequence[Prediction], mask_labels: Sequence[Tensor],
               class_labels: Sequence[Tensor]) -> None:
        if not predictions:
            raise ValueError("predictions must hold at least one (masks, classes) pair")
        frames = predictions[-1][0].shape[0]
        if len(mask_labels) != frames or len(class_labels) != frames:
            raise ValueError(f"one target per frame is needed: the predictions have {frames} frames (T * B, "
                             f"frame-major), got {len(mask_labels)} mask_labels and {len(class_labels)} class_labels")
        for f, (m, c) in enumerate(zip(mask_labels, class_labels)):
            if m.ndim != 3 or c.ndim != 1 or m.shape[0] != c.shape[0]:
                raise ValueError(f"frame {f}: mask_labels must be (n, H, W) and class_labels (n,) with the same n, "
                                 f"got {tuple(m.shape)} and {tuple(c.shape)}")
            if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.num_labels):
                raise ValueError(f"frame {f}: class labels must lie in [0, {self.num_labels}), got {c.tolist()}")
