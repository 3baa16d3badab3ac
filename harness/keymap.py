"""Key mapping: one table of tensor correspondences, read both ways, that names what it cannot map.

Every conversion between two state-dict layouts (an upstream release and our candidate, timm and
an original repository, a reference model and a port) is the same job: rename keys, sometimes
join or split tensors (a fused ``qkv`` against ``q``/``k``/``v``), sometimes change a layout
(a transpose). This module does that job once, for the family conversions and for the inferred
weight maps of :mod:`harness.weightmap`.

The unit is a :class:`Move`: source keys -> target keys. Its tensors are read, each through its
``pre`` steps; several sources are concatenated along ``dim``; the ``steps`` run on the result;
several targets split it along ``dim`` (``sizes``, or equal parts). Steps are data: ``slice``,
``reshape``, ``transpose``, ``permute`` (a stored ``concat`` step is the move's join), ``insert``
(a block of one constant put in along a dim: the zero key bias a fused ``qkv`` bias holds where
the other side keeps only ``q_bias`` and ``v_bias``; marked ``unread`` where the forward never reads
those rows, so their values need not be that constant) and its inverse ``remove`` (marked ``unread``
where the source's forward never reads the rows it drops: read backward, they come back as unread
zeros), and ``fold_norm``:
a batch norm's tensors (the move's sources, concatenated along dim 0, in the roles its ``of`` names)
folded into the ``scale`` or ``shift`` of ``x * scale + shift`` (``scale = weight / sqrt(var +
eps)``, ``shift = bias - mean * scale``). A fold loses values (four tensors become two), so it has no
inverse: reading it backward is refused. ``gather`` (dim, index) takes the rows ``index`` lists
along ``dim``, each as often as listed: a relative-position bias laid out ``(heads, N, N)`` from a
table of ``(2w - 1)^2`` rows, ``table[relative_position_index]``. Read backward, each row comes from
the first place that took it, and a table with a row no place takes cannot be read back.

A :class:`KeyTable` is an ordered tuple of :class:`Rule` rows, written once from the reference
side (the upstream layout) to the candidate side. A template names an index with ``{i}``
(``{j}`` ...: any name; each matches a decimal number and must appear on both sides); a template
ending in ``.`` is a prefix and carries the rest of the key (``weight``, ``bias``) across; any
other template is a whole key. Reading a state dict, each key is given to the first rule with a
source template that matches it (table order decides, so specific rows go first); the rule's
other source templates name its partners, which must be present, in any order. Reading backward swaps the
sides of every rule and inverts its steps (a reshape names its inverse in ``reverse``).

Every source key ends in exactly one place of a :class:`KeyMapping`: mapped into ``state``,
``ignored`` (a rule with no target: known and deliberately not carried), or ``unmatched`` (no
rule knows it). ``to_candidate``/``to_reference`` raise a ValueError naming the unmatched keys;
:meth:`KeyTable.map` with ``strict=False`` returns them for the caller to report.

Moves act on tensors and equally on :class:`harness.headers.TensorHeader` s (shapes without
values), which is how a checkpoint is recognized without importing torch; this module imports
torch only to concatenate real tensors.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from harness.checks import check_choice, is_int_list, one_line
from harness.headers import TensorHeader

if TYPE_CHECKING:
    import torch

__all__ = ["Move", "Rule", "KeyTable", "KeyMapping", "StateDict", "Step", "apply_steps", "apply_moves", "invert_steps",
           "describe_steps", "check_step", "shape_after", "LAYOUT_OPS", "STEP_OPS", "NORM_ROLES"]

StateDict = dict[str, "torch.Tensor"]
Step = dict[str, Any]
LAYOUT_OPS = ("reshape", "transpose", "permute")
STEP_OPS = ("concat", "slice", "insert", "remove", "fold_norm", "gather", *LAYOUT_OPS)
# the roles of a batch norm's tensors a fold_norm step reads; ``running_var`` is always one of them
NORM_ROLES = ("weight", "bias", "running_mean", "running_var")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")


# -- steps ----------------------------------------------------------------------------------------
# the fields each op needs: (name, what it must be, check)
_INT = ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
_INTS = ("a list of integers", is_int_list)
_PAIR = ("a list of two integers", lambda v: _INTS[1](v) and len(v) == 2)
_NUMBER = ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
_STEP_FIELDS = {
    "slice": (("dim", *_INT), ("start", *_INT), ("stop", *_INT)),
    "reshape": (("shape", *_INTS),),
    "transpose": (("dims", *_PAIR),),
    "permute": (("dims", *_INTS),),
    "concat": (("dim", *_INT),),
    "insert": (("dim", *_INT), ("start", *_INT), ("size", *_INT), ("value", *_NUMBER)),
    "remove": (("dim", *_INT), ("start", *_INT), ("stop", *_INT)),
    "gather": (("dim", *_INT), ("index", "a list of row numbers (integers >= 0)", lambda v: is_int_list(v, minimum=0))),
    "fold_norm": (("part", "'scale' or 'shift'", lambda v: v in ("scale", "shift")), ("eps", *_NUMBER),
                  ("of", f"a list of distinct roles among {', '.join(NORM_ROLES)}, running_var among them",
                   lambda v: isinstance(v, list) and "running_var" in v and len(set(v)) == len(v)
                   and all(isinstance(r, str) and r in NORM_ROLES for r in v))),
}
_STEP_EXAMPLES = ("{'op': 'transpose', 'dims': [0, 1]}, {'op': 'permute', 'dims': [2, 3, 1, 0]}, "
                  "{'op': 'reshape', 'shape': [96, 1, 1]}, {'op': 'slice', 'dim': 0, 'start': 0, 'stop': 96}, "
                  "{'op': 'insert', 'dim': 0, 'start': 96, 'size': 96, 'value': 0.0}, "
                  "{'op': 'fold_norm', 'part': 'scale', 'eps': 1e-05, 'of': ['weight', 'bias', 'running_mean', "
                  "'running_var']}")


def check_step(step: Any) -> Step:
    """``step`` as a dict, or a ValueError naming the ops there are and the fields each needs."""
    if not isinstance(step, Mapping) or step.get("op") not in STEP_OPS:
        raise ValueError(f"transform step {step!r} is not one of {', '.join(STEP_OPS)}; write it as "
                         f"{_STEP_EXAMPLES}")
    for name, what, ok in _STEP_FIELDS[step["op"]]:
        if name not in step or not ok(step[name]):
            raise ValueError(f"transform step {dict(step)!r}: {name!r} must be {what}, got "
                             f"{step.get(name, 'nothing')!r}; steps look like {_STEP_EXAMPLES}")
    if step["op"] in ("slice", "remove") and not 0 <= step["start"] <= step["stop"]:
        raise ValueError(f"transform step {dict(step)!r}: a {step['op']} needs 0 <= start <= stop")
    if step["op"] == "insert" and not (step["start"] >= 0 and step["size"] >= 0):
        raise ValueError(f"transform step {dict(step)!r}: an insert needs start >= 0 and size >= 0")
    if step["op"] in ("insert", "remove") and not isinstance(step.get("unread", False), bool):
        raise ValueError(f"transform step {dict(step)!r}: 'unread' must be true or false (true: the forward never "
                         f"reads those rows), got {step['unread']!r}")
    if step["op"] == "fold_norm" and step["part"] == "shift" and "running_mean" not in step["of"]:
        raise ValueError(f"transform step {dict(step)!r}: a shift is folded from the running_mean too; "
                         f"name it in 'of'")
    return dict(step)


def apply_steps(tensor: torch.Tensor, steps: Sequence[Step]) -> torch.Tensor:
    """``tensor`` through ``steps`` in order; joining several tensors is a :class:`Move`'s concat."""
    out = tensor
    for step in steps:
        op = check_step(step)["op"]
        if op == "concat":
            raise ValueError(f"a concat step joins a move's sources and cannot act on one tensor, got {list(steps)}")
        if op == "slice":
            out = out.narrow(step["dim"], step["start"], step["stop"] - step["start"])
        elif op == "insert":
            out = _inserted(out, step)
        elif op == "remove":
            dim, size = step["dim"], out.shape[step["dim"]]
            out = _cat([out.narrow(dim, 0, step["start"]), out.narrow(dim, step["stop"], size - step["stop"])], dim)
        elif op == "fold_norm":
            out = _folded(out, step)
        elif op == "gather":
            out = _gathered(out, step)
        elif op == "reshape":
            out = out.reshape(step["shape"])
        elif op == "transpose":
            out = out.transpose(*step["dims"])
        else:
            out = out.permute(*step["dims"])
    return out


def _gathered(value: Any, step: Step) -> Any:
    """The rows ``step["index"]`` lists along ``step["dim"]`` of ``value``, in that order."""
    dim, index = step["dim"], step["index"]
    if index and max(index) >= value.shape[dim]:
        raise IndexError(f"gather of row {max(index)} along dim {dim} of a tensor of shape {tuple(value.shape)}")
    if isinstance(value, TensorHeader):
        return value._derived([len(index) if d == dim else n for d, n in enumerate(value.shape)])
    import torch

    return value.index_select(dim, torch.tensor(index, dtype=torch.long, device=value.device))


def _folded(value: Any, step: Step) -> Any:
    """The ``scale`` or ``shift`` a batch norm folds into: ``value`` holds its tensors in the roles
    ``step["of"]`` names, concatenated along dim 0. A weight or bias not named is 1 or 0."""
    roles = step["of"]
    if value.ndim < 1 or value.shape[0] % len(roles):
        raise IndexError(f"fold_norm of {roles} needs {len(roles)} equal parts along dim 0, got a tensor of shape "
                         f"{tuple(value.shape)}")
    size = value.shape[0] // len(roles)
    if isinstance(value, TensorHeader):
        return value._derived((size, *value.shape[1:]))
    parts = dict(zip(roles, value.split(size)))
    scale = (parts["running_var"] + step["eps"]).rsqrt()
    if "weight" in parts:
        scale = scale * parts["weight"]
    if step["part"] == "scale":
        return scale
    shift = -parts["running_mean"] * scale
    return shift + parts["bias"] if "bias" in parts else shift


def _inserted(value: Any, step: Step) -> Any:
    """``value`` with ``step["size"]`` entries of ``step["value"]`` put in at ``start`` along ``dim``."""
    dim, start = step["dim"], step["start"]
    shape = list(value.shape)
    if not 0 <= start <= shape[dim]:
        raise IndexError(f"insert at {start} along dim {dim} of a tensor of shape {tuple(shape)}")
    block = [step["size"] if d == dim else n for d, n in enumerate(shape)]
    if isinstance(value, TensorHeader):
        constant = value._derived(block)
    else:
        import torch

        constant = torch.full(block, step["value"], dtype=value.dtype, device=value.device)
    return _cat([value.narrow(dim, 0, start), constant, value.narrow(dim, start, shape[dim] - start)], dim)


def shape_after(steps: Sequence[Step], shape: Sequence[int]) -> tuple[int, ...]:
    """The shape layout ``steps`` (and slices, inserts, removals) give a tensor of ``shape``."""
    shape = list(shape)
    for step in steps:
        if step["op"] == "slice":
            shape[step["dim"]] = step["stop"] - step["start"]
        elif step["op"] == "insert":
            shape[step["dim"]] += step["size"]
        elif step["op"] == "remove":
            shape[step["dim"]] -= step["stop"] - step["start"]
        elif step["op"] == "fold_norm":
            shape[0] //= len(step["of"])
        elif step["op"] == "gather":
            shape[step["dim"]] = len(step["index"])
        elif step["op"] == "reshape":
            shape = list(step["shape"])
        elif step["op"] == "transpose":
            a, b = step["dims"]
            shape[a], shape[b] = shape[b], shape[a]
        elif step["op"] == "permute":
            shape = [shape[d] for d in step["dims"]]
    return tuple(shape)


def invert_steps(steps: Sequence[Step], source_shape: Sequence[int] | None = None) -> list[Step]:
    """Steps undoing layout ``steps`` (inserts: the inserted block removed; gathers: each row taken
    from the first place that took it); a reshape or a gather can only be undone knowing ``source_shape``."""
    inverse: list[Step] = []
    shape = None if source_shape is None else list(source_shape)
    for step in steps:
        op = step["op"]
        if op == "reshape":
            if shape is None:
                raise ValueError(f"a reshape step {step} cannot be inverted without the shape it started from; "
                                 f"give the rule its reverse steps (Rule(..., reverse=...))")
            inverse.append({"op": "reshape", "shape": list(shape)})
        elif op == "transpose":
            inverse.append(dict(step))
        elif op == "permute":
            dims = step["dims"]
            inverse.append({"op": "permute", "dims": [dims.index(i) for i in range(len(dims))]})
        elif op == "insert":
            inverse.append({"op": "remove", "dim": step["dim"], "start": step["start"],
                            "stop": step["start"] + step["size"]})
        elif op == "remove" and step.get("unread"):  # rows nothing reads: any value gives them back
            inverse.append({"op": "insert", "dim": step["dim"], "start": step["start"],
                            "size": step["stop"] - step["start"], "value": 0.0, "unread": True})
        elif op == "gather":
            inverse.append(_ungathered(step, shape))
        elif op == "fold_norm":
            raise ValueError(f"step {step!r} folds a batch norm's {', '.join(step['of'])} into one {step['part']}: "
                             f"those tensors cannot be recovered from it, so the step cannot be read backward")
        else:
            raise ValueError(f"step {step!r} is not a layout step ({', '.join(LAYOUT_OPS)}), an insert or the "
                             f"removal of rows nothing reads")
        if shape is not None:
            shape = list(shape_after([step], shape))
    return inverse[::-1]


def _ungathered(step: Step, shape: list[int] | None) -> Step:
    """The gather giving back the rows a ``gather`` step took: each from the first place that took it."""
    if shape is None:
        raise ValueError("a gather step cannot be inverted without the shape it started from")
    first: dict[int, int] = {}
    for at, row in enumerate(step["index"]):
        first.setdefault(row, at)
    missing = [row for row in range(shape[step["dim"]]) if row not in first]
    if missing:
        raise ValueError(f"a gather step takes no value from {len(missing)} of the {shape[step['dim']]} rows along dim "
                         f"{step['dim']} (row {missing[0]} first): those rows cannot be read back")
    return {"op": "gather", "dim": step["dim"], "index": [first[row] for row in range(shape[step["dim"]])]}


def simplify_steps(steps: Sequence[Step], shape: Sequence[int]) -> list[Step]:
    """Layout ``steps`` on a tensor of ``shape`` with runs merged: consecutive reshapes become the
    last one, consecutive transposes and permutes one permute, and whatever gives back the shape
    it started from (a reshape) or the order it started from (a permute) is dropped."""
    out: list[Step] = []  # transposes kept as permutes while merging
    shapes = [tuple(shape)]  # the shape before each step of ``out``, and after the last
    for step in steps:
        if step["op"] == "transpose":
            dims = list(range(len(shapes[-1])))
            a, b = step["dims"]
            dims[a], dims[b] = dims[b], dims[a]
            step = {"op": "permute", "dims": dims}
        if out and out[-1]["op"] == step["op"] == "reshape":
            out.pop(), shapes.pop()
        elif out and out[-1]["op"] == step["op"] == "permute":
            first = out.pop()["dims"]
            shapes.pop()
            step = {"op": "permute", "dims": [first[d] for d in step["dims"]]}
        after = shape_after([step], shapes[-1])
        if (step["op"] == "reshape" and after == shapes[-1]) or (step["op"] == "permute" and step["dims"] == sorted(step["dims"])):
            continue
        out.append(dict(step))
        shapes.append(after)
    # a permute of two dims reads as the transpose it is
    return [{"op": "transpose", "dims": [0, 1]} if s["op"] == "permute" and len(s["dims"]) == 2 else s for s in out]


def describe_steps(steps: Sequence[Step]) -> str:
    """``transpose(dims=[0, 1]) + reshape(shape=[4, 2])``; ``identity`` for none."""
    if not steps:
        return "identity"
    return " + ".join(f"{s['op']}(" + ", ".join(f"{k}={_shown_value(v)}" for k, v in s.items() if k != "op") + ")"
                      for s in steps)


def _shown_value(value: Any) -> str:
    """A step's field as text; a long list (a gather's index) by its first values and its length."""
    if isinstance(value, list) and len(value) > 8:
        return f"[{', '.join(map(str, value[:4]))}, ... ({len(value)} values)]"
    return str(value)


# -- moves: the concrete unit ---------------------------------------------------------------------
@dataclass(frozen=True)
class Move:
    """Source keys -> target keys: ``pre`` steps per source, concat, ``steps``, split."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    steps: tuple[Step, ...] = ()
    dim: int = 0
    sizes: tuple[int, ...] | None = None  # split sizes along dim; None: equal parts
    pre: tuple[tuple[Step, ...], ...] = ()

    def apply(self, state: Mapping[str, torch.Tensor]) -> StateDict:
        parts = [state[k].detach() for k in self.sources]
        if self.pre:
            parts = [apply_steps(p, s) for p, s in zip(parts, self.pre)]
        value = parts[0] if len(parts) == 1 else _cat(parts, self.dim)
        value = apply_steps(value, self.steps)
        return dict(zip(self.targets, [value] if len(self.targets) == 1 else self._split(value)))

    def _split(self, value: torch.Tensor) -> list[torch.Tensor]:
        n, size = len(self.targets), value.shape[self.dim]
        sizes = self.sizes
        if sizes is None:
            if size % n:
                raise ValueError(f"cannot split {self.sources} (size {size} along dim {self.dim}) into {n} equal "
                                 f"parts for {self.targets}")
            sizes = (size // n,) * n
        if sum(sizes) != size:
            raise ValueError(f"split sizes {list(sizes)} for {self.targets} do not add up to {size}, the size of "
                             f"{self.sources} along dim {self.dim}")
        return list(value.split(list(sizes), self.dim))


def _cat(parts: Sequence[Any], dim: int) -> Any:
    """Concatenated tensors, or the header of the concatenation (recognition needs no torch)."""
    if isinstance(parts[0], TensorHeader):
        return TensorHeader.cat(parts, dim)
    import torch

    return torch.cat(parts, dim=dim)


def apply_moves(moves: Iterable[Move], state: Mapping[str, torch.Tensor], *, what: str = "state") -> StateDict:
    """Every move applied to ``state``; a ValueError names a source key the state lacks."""
    out: StateDict = {}
    for move in moves:
        missing = [k for k in move.sources if k not in state]
        if missing:
            raise ValueError(f"{what} has no {missing[0]!r}, which {' + '.join(move.sources)} -> "
                             f"{' + '.join(move.targets)} needs; the table was made for another layout")
        try:
            out.update(move.apply(state))
        except (RuntimeError, IndexError) as exc:  # a step that does not fit the tensor it is given
            shapes = ", ".join(f"{k} {tuple(state[k].shape)}" for k in move.sources)
            raise ValueError(f"{' + '.join(move.sources)} -> {' + '.join(move.targets)}: the steps "
                             f"{describe_steps(move.steps)} do not fit {shapes} "
                             f"({one_line(exc)})") from None
    return out


# -- rules and tables -----------------------------------------------------------------------------
def _templates(side: str | Sequence[str] | None) -> tuple[str, ...]:
    if side is None:
        return ()
    if isinstance(side, str):
        return (side,)
    if isinstance(side, Sequence) and side and all(isinstance(t, str) for t in side):
        return tuple(side)
    raise TypeError(f"a rule side must be a key template, a tuple of templates or None, got {side!r}")


@dataclass(frozen=True)
class Rule:
    """Reference template(s) -> candidate template(s); see the module docstring.

    ``None`` on one side: the other side's keys are known and not carried (ignored).
    ``steps`` run reference -> candidate; ``reverse`` runs candidate -> reference and is needed
    only when ``steps`` hold a reshape (a reshape does not say the shape it came from).
    """

    reference: str | tuple[str, ...] | None
    candidate: str | tuple[str, ...] | None
    steps: tuple[Step, ...] = ()
    dim: int = 0
    reverse: tuple[Step, ...] | None = None

    def __post_init__(self) -> None:
        ref, cand = _templates(self.reference), _templates(self.candidate)
        if not ref and not cand:
            raise ValueError("a rule needs a template on at least one side")
        if len(ref) > 1 and len(cand) > 1:
            raise ValueError(f"rule {ref} -> {cand}: only one side may hold several templates (concat/split)")
        templates = ref + cand
        names = {t: sorted(_PLACEHOLDER.findall(t)) for t in templates}
        if len({tuple(v) for v in names.values()}) > 1:
            raise ValueError(f"rule {ref} -> {cand}: every template must name the same indices, got {names}")
        if len({t.endswith(".") for t in templates}) > 1:
            raise ValueError(f"rule {ref} -> {cand}: either every template is a prefix (ends in '.') or none is")
        for step in (*self.steps, *(self.reverse or ())):
            check_step(step)
        if any(s["op"] == "reshape" for s in self.steps) and self.reverse is None and ref and cand:
            raise ValueError(f"rule {ref} -> {cand} reshapes: give its reverse steps (reverse=...) so the table "
                             f"reads backward too")

    def sides(self, to: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[Step, ...]]:
        """(source templates, target templates, steps) when reading toward ``to``."""
        ref, cand = _templates(self.reference), _templates(self.candidate)
        if to == "candidate":
            return ref, cand, tuple(self.steps)
        steps = self.reverse if self.reverse is not None else tuple(invert_steps(self.steps))
        return cand, ref, tuple(steps)


def _pattern(template: str) -> re.Pattern:
    seen: set[str] = set()

    def group(m: re.Match) -> str:
        name = m.group(1)
        if name in seen:
            return f"(?P={name})"
        seen.add(name)
        return rf"(?P<{name}>\d+)"

    body = _PLACEHOLDER.sub(group, re.escape(template).replace(r"\{", "{").replace(r"\}", "}"))
    return re.compile("^" + body + ("(?P<_rest>.+)$" if template.endswith(".") else "$"))


def _fill(template: str, values: Mapping[str, str]) -> str:
    key = _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
    return key + values.get("_rest", "") if template.endswith(".") else key


@dataclass
class KeyMapping:
    """What reading a state dict through a table gave: ``state`` by target key, and the source
    keys that were ``ignored`` (a rule without target) or ``unmatched`` (no rule)."""

    state: StateDict
    unmatched: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


class KeyTable:
    """An ordered table of :class:`Rule` rows between a reference layout and a candidate layout."""

    def __init__(self, *rules: Rule, name: str = "key table") -> None:
        for rule in rules:
            if not isinstance(rule, Rule):
                raise TypeError(f"{name}: every row must be a harness.keymap.Rule, got {rule!r}")
        self.rules = rules
        self.name = name
        self._compiled = {to: [(rule, *rule.sides(to)) for rule in rules] for to in ("candidate", "reference")}
        self._patterns = {t: _pattern(t) for r in rules for t in _templates(r.reference) + _templates(r.candidate)}

    def __repr__(self) -> str:
        return f"KeyTable({self.name!r}, {len(self.rules)} rules)"

    def to_candidate(self, reference_state: Mapping[str, torch.Tensor]) -> StateDict:
        """The candidate state dict from a reference (upstream) one; ValueError on unmatched keys."""
        return self.map(reference_state, to="candidate").state

    def to_reference(self, candidate_state: Mapping[str, torch.Tensor]) -> StateDict:
        """The table read backward: the reference (upstream) state dict from a candidate one."""
        return self.map(candidate_state, to="reference").state

    def moves(self, keys: Iterable[str], to: str) -> tuple[list[Move], list[str], list[str]]:
        """(moves, ignored keys, unmatched keys) for source ``keys`` read toward ``to``."""
        check_choice("to", to, ("candidate", "reference"))
        keys = list(keys)
        present, taken = set(keys), set()
        moves, ignored, unmatched = [], [], []
        for key in keys:
            if key in taken:
                continue
            found = self._match(key, to)
            if found is None:
                unmatched.append(key)
                continue
            (sources, targets, steps, dim) = found
            missing = [k for k in sources if k not in present or k in taken]
            if missing:
                raise ValueError(f"{self.name}: {key!r} is read together with {missing}, which the state "
                                 f"{'lacks' if missing[0] not in present else 'gave to another rule'}")
            taken.update(sources)
            if targets:
                moves.append(Move(sources=sources, targets=targets, steps=steps, dim=dim))
            else:
                ignored.extend(sources)
        return moves, ignored, unmatched

    def _match(self, key: str, to: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[Step, ...], int] | None:
        for rule, sources, targets, steps in self._compiled[to]:
            for template in sources:  # any source of a concat, whichever the state lists first
                m = self._patterns[template].match(key)
                if m is not None:
                    values = m.groupdict()
                    return (tuple(_fill(t, values) for t in sources), tuple(_fill(t, values) for t in targets),
                            steps, rule.dim)
        return None

    def map(self, state: Mapping[str, torch.Tensor], *, to: str, strict: bool = True) -> KeyMapping:
        """Read ``state`` toward ``to`` ("candidate" or "reference"); with ``strict``, a ValueError
        names the keys no rule knows."""
        if not isinstance(state, Mapping):
            raise TypeError(f"{self.name}: expected a state dict (a mapping of key -> tensor), got "
                            f"{type(state).__name__}")
        moves, ignored, unmatched = self.moves(state, to)
        if strict and unmatched:
            shown = ", ".join(repr(k) for k in unmatched[:5])
            more = f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else ""
            raise ValueError(f"{self.name}: {len(unmatched)} of {len(state)} keys match no rule: {shown}{more}; "
                             f"this is not the layout the table reads, or the table needs a row for them")
        source = "reference state" if to == "candidate" else "candidate state"
        return KeyMapping(state=apply_moves(moves, state, what=source), unmatched=unmatched, ignored=ignored)
