"""VidEoMT training against transformers: per-layer predictions, the Hungarian-matched loss (value and
every gradient, float64, seeded targets), and one AdamW step that keeps the weights corresponding."""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator

import pytest
import torch

import harness
from candidates.videomt.loss import VidEoMTLoss, auxiliary_predictions, hungarian_match

KEYS = ("class_queries_logits", "masks_queries_logits", "last_hidden_state")
SEED = 0
POINTS = 512


@contextlib.contextmanager
def _default_float64() -> Iterator[None]:
    """transformers' loss draws its random points in the default dtype; float64 predictions need float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _in_float64(fn):
    def run(*args: Any, **kwargs: Any) -> Any:
        with _default_float64():
            return fn(*args, **kwargs)
    return run


def _targets(frames: int, size: int, labels: int, seed: int = 1) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per frame: 1-3 random binary masks and their classes (seeded)."""
    g = torch.Generator().manual_seed(seed)
    masks, classes = [], []
    for _ in range(frames):
        n = int(torch.randint(1, 4, (1,), generator=g))
        masks.append((torch.rand(n, size, size, generator=g) > 0.5).double())
        classes.append(torch.randint(0, labels, (n,), generator=g))
    return masks, classes


def _reference_predictions(reference: torch.nn.Module, pixel_values: torch.Tensor) -> tuple[list, Any]:
    """Videomt's predictions before each query layer (its final norm and heads on the layer's
    input), frame-major, then the final ones: EoMT's per-layer supervision, for video."""
    start = reference.config.num_hidden_layers - reference.config.num_blocks
    per_layer: list[list] = [[] for _ in range(reference.config.num_blocks)]
    handles = [layer.register_forward_pre_hook(
        lambda module, args, i=i: per_layer[i].append(reference.predict(reference.layernorm(args[0]))))
        for i, layer in enumerate(reference.layers[start:])]
    try:
        out = reference(pixel_values_videos=pixel_values)
    finally:
        for h in handles:
            h.remove()
    predictions = [(torch.cat([m for m, _ in f]), torch.cat([c for _, c in f])) for f in per_layer]
    return predictions + [(out.masks_queries_logits, out.class_queries_logits)], out


def _candidate_loss(criterion: VidEoMTLoss, masks: list, classes: list):
    def call(model: torch.nn.Module, call: harness.Call) -> dict[str, torch.Tensor]:
        predictions, out = auxiliary_predictions(model, call.args[0])
        torch.manual_seed(SEED)
        return {**{k: getattr(out, k) for k in KEYS}, "loss": criterion(predictions, masks, classes).total}
    return call


def _eomt_predictions(reference: torch.nn.Module, pixel_values: torch.Tensor) -> tuple[list, Any]:
    """EoMT-DINOv3's own per-layer predictions: in eval with mask probability 1 its forward predicts
    before every query layer (for the attention masks) and at the end, the list its training loop sums."""
    made = []
    predict = reference.predict
    reference.predict = lambda sequence: made.append(predict(sequence)) or made[-1]
    try:
        out = reference(pixel_values=pixel_values)
    finally:
        del reference.predict
    # the final prediction as the model returns it, so that its gradient passes through the output
    return made[:-1] + [(out.masks_queries_logits, out.class_queries_logits)], out


def _reference_loss(predictions_of, masks: list, classes: list):
    def call(model: torch.nn.Module, call: harness.Call) -> dict[str, torch.Tensor]:
        predictions, out = predictions_of(model, call.args[0])
        torch.manual_seed(SEED)
        with _default_float64():  # EoMT's training loop: each prediction through the criterion, summed
            loss = sum(model.get_loss(model.get_loss_dict(m, c, masks, classes, None)) for m, c in predictions)
        return {**{k: getattr(out, k) for k in KEYS}, "loss": loss}
    return call


def _pair_setup(name: str):
    pair = harness.get_pair(name)
    candidate, reference = pair.build(dtype=torch.float64)
    reference.criterion.forward = _in_float64(reference.criterion.forward)
    pixels = pair.inputs(dtype=torch.float64).args[0]
    frames = pixels.shape[0] * (pixels.shape[1] if pixels.ndim == 5 else 1)
    masks, classes = _targets(frames, candidate.config.image_size, candidate.config.num_labels)
    for module in (reference.criterion, reference.criterion.matcher):
        module.num_points = POINTS  # fewer sampled points than upstream's 12544: a small test, the same math
    criterion = VidEoMTLoss(candidate.config.num_labels, num_points=POINTS).double()
    cand_call = _candidate_loss(criterion, masks, classes)
    ref_call = _reference_loss(_reference_predictions if pixels.ndim == 5 else _eomt_predictions, masks, classes)
    return pair, candidate, reference, pixels, cand_call, ref_call


def _outputs(out: Any) -> dict[str, torch.Tensor]:
    return {k: out[k] if isinstance(out, dict) else getattr(out, k) for k in KEYS}


@pytest.mark.parametrize("name", ["videomt", "eomt_dinov3"])
def test_training_loss_and_every_gradient_match_transformers(name):
    pair, candidate, reference, pixels, cand_call, ref_call = _pair_setup(name)
    report = harness.compare(
        candidate, reference, pixels, **{**pair.compare_options(), "candidate_call": cand_call,
                                         "reference_call": ref_call, "candidate_outputs": _outputs,
                                         "reference_outputs": _outputs},
        backward=True, backward_loss=(lambda out: out["loss"], lambda out: out["loss"]))
    loss = report.backward.loss
    assert abs(loss["candidate"] - loss["reference"]) <= 1e-12 * abs(loss["reference"]), loss
    assert report.backward.passed, report.format()
    worst = report.backward.worst_parameter
    assert worst.metrics.rel_l2 <= 1e-10, f"{worst.candidate}: gradient rel_l2 {worst.metrics.rel_l2:.3g}"


def test_eomt_training_loop_here_is_the_one_in_its_forward():
    """The reference loss above (per-layer predictions through the criterion, summed) is exactly
    what EoMT-DINOv3's forward computes when given labels."""
    _, _, reference, pixels, _, ref_call = _pair_setup("eomt_dinov3")
    masks, classes = _targets(pixels.shape[0], reference.config.image_size, reference.config.num_labels)
    torch.manual_seed(SEED)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, mask_labels=masks, class_labels=classes).loss
        got = ref_call(reference, harness.Call((pixels,)))["loss"]
    assert torch.equal(got, expected), f"{got.item()!r} vs EoMT's own {expected.item()!r}"


def test_matching_agrees_with_the_transformers_matcher():
    _, candidate, reference, pixels, _, _ = _pair_setup("eomt_dinov3")
    masks, classes = _targets(pixels.shape[0], candidate.config.image_size, candidate.config.num_labels, seed=3)
    with torch.no_grad():
        out = candidate(pixels)
    matcher = reference.criterion.matcher
    torch.manual_seed(SEED)
    with _default_float64():
        expected = matcher(out.masks_queries_logits, out.class_queries_logits, masks, classes)
    torch.manual_seed(SEED)
    got = hungarian_match(out.masks_queries_logits, out.class_queries_logits, masks, classes,
                          num_points=matcher.num_points, class_weight=matcher.cost_class,
                          mask_weight=matcher.cost_mask, dice_weight=matcher.cost_dice)
    for frame, ((q, t), (eq, et)) in enumerate(zip(got, expected)):
        assert torch.equal(q, eq) and torch.equal(t, et), f"frame {frame}: matched {q, t}, transformers {eq, et}"


def test_per_layer_predictions_match_the_reference_frame_major():
    pair, candidate, reference, pixels, _, _ = _pair_setup("videomt")
    with torch.no_grad():
        ours, out = auxiliary_predictions(candidate, pixels)
        theirs, _ = _reference_predictions(reference, pixels)
    assert len(ours) == candidate.config.num_blocks + 1
    assert torch.equal(ours[-1][0], out.masks_queries_logits)
    for i, ((m, c), (rm, rc)) in enumerate(zip(ours, theirs)):
        assert m.shape[0] == pixels.shape[0] * pixels.shape[1], f"prediction {i}: not one row per frame"
        for what, a, b in (("masks", m, rm), ("classes", c, rc)):
            err = harness.measure(a, b)
            assert err.max_abs <= 1e-12, f"prediction {i} {what} differs by {err.max_abs:.3g}"


def _gradients(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {k: torch.zeros_like(p) if g is None else g for (k, p), g in zip(params.items(), grads)}


@pytest.mark.parametrize("name", ["videomt", "eomt_dinov3"])
def test_one_adamw_step_keeps_the_weights_corresponding(name):
    pair, candidate, reference, pixels, cand_call, ref_call = _pair_setup(name)
    weights = harness.map_weights(candidate, reference, pixels, reference_call=pair.reference_call,
                                  candidate_outputs=_outputs, reference_outputs=_outputs, verify=False)
    stepped = []
    for model, call in ((candidate, cand_call), (reference, ref_call)):
        model = copy.deepcopy(model)  # the compared models stay as they were
        loss = _outputs_loss(call(model, harness.Call((pixels,))))
        for p, g in zip(model.parameters(), _gradients(model, loss).values()):
            p.grad = g
        torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05).step()
        stepped.append(model)
    expected = weights.to_candidate(dict(stepped[1].state_dict(keep_vars=True)))
    params = dict(stepped[0].named_parameters())
    mapped = [k for k in expected if k in params]
    assert len(mapped) >= len(params) - 2, f"only {len(mapped)} of {len(params)} parameters are mapped"
    moved = [k for k in mapped if not torch.equal(params[k], dict(candidate.named_parameters())[k])]
    assert moved, "the step changed no weight: the check would prove nothing"
    for key in mapped:
        err = harness.measure(params[key], expected[key]).max_abs
        assert err <= 1e-12, f"after one AdamW step {key} differs from its reference by {err:.3g}"


def _outputs_loss(out: Any) -> torch.Tensor:
    return out["loss"] if isinstance(out, dict) else out.loss


def test_one_target_list_per_frame_is_required():
    criterion = VidEoMTLoss(4)
    masks = torch.zeros(6, 5, 8, 8)
    with pytest.raises(ValueError, match="one target per frame"):
        criterion([(masks, torch.zeros(6, 5, 5))], [torch.zeros(1, 8, 8)], [torch.zeros(1, dtype=torch.long)])


def test_class_labels_outside_the_label_range_are_refused():
    criterion = VidEoMTLoss(4)
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 4\)"):
        criterion([(torch.zeros(1, 5, 8, 8), torch.zeros(1, 5, 5))], [torch.zeros(1, 8, 8)], [torch.tensor([4])])


@pytest.mark.parametrize("options, error, message", [
    (dict(num_labels=0), ValueError, "VidEoMTLoss num_labels must be an int >= 1, got 0"),
    (dict(num_points=1.5), TypeError, "VidEoMTLoss num_points must be an int >= 1, got float 1.5"),
    (dict(no_object_weight=-0.1), ValueError, "VidEoMTLoss no_object_weight must be a finite number >= 0, got -0.1"),
    (dict(oversample_ratio=0.5), ValueError, "VidEoMTLoss oversample_ratio must be a finite number >= 1, got 0.5"),
    (dict(importance_sample_ratio=1.5), ValueError,
     r"VidEoMTLoss importance_sample_ratio must be a share in \[0, 1\], got 1.5"),
])
def test_loss_options_are_checked(options, error, message):
    with pytest.raises(error, match=f"^{message}$"):
        VidEoMTLoss(**{"num_labels": 4, **options})
