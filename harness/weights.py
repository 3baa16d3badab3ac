"""Weight correspondence between two independently written models, inferred from a forward run.

Two implementations of one architecture name their tensors differently, nest their modules
differently, fuse what the other splits (one ``qkv`` against ``q``/``k``/``v``) and store some
tensors in another layout (a layer scale of shape ``(C, 1, 1)`` against ``(C,)``, a 1x1
convolution against a linear layer). What they share is the order in which the computation uses
its weights. The algorithm:

1. First use. Each model runs once on the inputs under a torch-function mode that sees every torch
   operation, functional ones included (``F.linear``, ``x * gamma``, ``torch.cat([cls_token, x])``,
   ``F.multi_head_attention_forward``), and notes which parameter or learned buffer (BatchNorm
   running statistics) each operation touches for the first time, in argument order. Tensors the
   forward never touches follow in state-dict order. A tensor the forward re-lays out before using
   it (``F.linear(x, w.t())``, ``F.conv2d(x, w.permute(3, 2, 0, 1))``, a cast) counts as used by
   the operation reading the result, in that layout: the steps back to the stored layout join its
   entry, so a square matrix or a square 1x1 kernel stored the other way is mapped right, where its
   shape alone could not tell. A matrix read as the right operand of a product (``x @ W``) is a
   linear layer's weight transposed; so is any einsum operand contracting the input's features
   (``'bnc,hdc->bhnd'``, Flax's ``'bnc,chd->bhnd'``): it is read as torch's ``(out, in)`` through
   the permute and reshape its subscripts imply, its output letters first. A tensor first used by
   adding it to the output of such a layer without bias (``x @ W + b``) is that layer's bias, read
   as ``(out,)``. Reading only a tensor's shape (``b.numel()``, ``torch.zeros_like(b)``) is no use,
   nor is writing constants into rows of a copy of it (torchvision's Swin V2 zeroes the key third
   of its fused ``qkv`` bias where used): the copy's reader uses it. A tensor read again later by
   another operation (a head tied to the embedding, ``h @ emb.weight.t()``; a relative-position
   table every block reads; a block applied twice) is noted there again, as a later read (up to
   ``_REPEATS`` per tensor). A tensor the forward reads only in parts along one dim that tile it
   (``kernels[i]``, ``select``, ``unbind``, ``split``, slices ``w[lo:hi]`` of a norm's tensors passed to
   ``F.batch_norm``), never whole, says so; it is first used where its first part is taken.
2. Siblings. Consecutive operations of one kind that read the same input tensor (the query, key
   and value projections of one token sequence) may stand for one fused operation on the other
   side: their i-th tensors, concatenated along dim 0, form a composite that can match one tensor.
   Layers of another kind reading consecutive parts of one input along one dim (a grouped convolution
   written as one convolution per group on ``x.chunk(groups, 1)``) are siblings too: their kernels
   concatenated are the grouped kernel; such a run is one module when modules are put in order (below).
   Consecutive linear layers may also read different inputs: a cross-attention projects its query
   from one sequence and its keys and values from another (``nn.MultiheadAttention``'s one
   ``in_proj_weight`` against separate ``q`` and ``kv`` layers). But never one reading what another
   computed: a fused layer computes its parts at once, so an attention's output projection is no
   part of its ``q``, ``k``, ``v`` (four layers of ``(C, C)`` would otherwise make the shape of the
   MLP's ``(4C, C)`` and shift the map). Each operation notes the latest operation using weights its
   inputs derive from, followed through every operation in between. Nor do layers on different
   inputs part two neighbours reading one input: a class attention projecting its query from the
   class token before its keys and values from all tokens holds a query layer and a key-value pair,
   never a fused query-key layer beside a value layer.
   A linear layer reading tensors concatenated along its outputs where used
   (``F.linear(x, torch.cat([wq, wk, wv]), torch.cat([bq, bk, bv]))``) is as many siblings.
   A tensor joined where used from stored tensors and zeros (timm's Swin V2 and BEiT build their
   fused bias as ``torch.cat([q_bias, zeros, v_bias])``) is one tensor with parts: matched to one
   tensor of the other side, each stored part takes its slice of it (``q_bias <- qkv.bias[0:C]``,
   ``v_bias <- qkv.bias[2C:3C]``); the rows of the zeros are not carried. The other way round the
   stored tensor takes the parts concatenated with the zeros inserted where they sit
   (``qkv.bias <- cat(q_bias, v_bias)`` + ``insert`` of C zeros at C); against a tensor joined
   alike, each part takes its twin. Likewise sibling linear layers some of which have no bias
   (BEiT's key projection: an affine map without constant term) make a composite bias with zeros
   in those layers' rows, which a fused layer's bias may match; the other way round each bias takes
   its slice of the fused one, the rows of the layers without one left out (marked ``rest``: read
   backward they are zeros). A tensor joined with zeros matched to such a composite (timm's BEiT
   against transformers' ``q_proj``, bias-free ``k_proj``, ``v_proj``) is cut apart there: each
   stored part takes the bias of the sibling filling its rows in that same call.
3. Alignment. A dynamic program over the two first-use sequences, in order, pairs tensors that can
   hold the same values (same shape; the same after squeezing or flattening; transposed; a
   projection of concatenated inputs ``(out, n * in)`` against its column blocks stacked ``(n, out,
   in)``, a port summing one projection per branch; a composite) and maximizes the number of
   pairs. A parameter may pair with a buffer (a frozen norm keeps its weight and bias as buffers),
   at a cost that keeps pairs of one kind first. Ties are broken by the operation that used the
   tensor (a ``layer_norm`` weight matches a ``layer_norm`` weight), then by the tensor's own name
   (``weight``/``bias``), then by word overlap of the full names. Names never decide alone. A
   tensor the forward never reads pairs only with one the other never reads: a branch the port
   holds but never calls (a dropped shortcut) sits after all it reads, and paired in order with the
   reference's read branch it would cross the head; the leftover search pairs it in its block.
   Later reads join the alignment only where first uses alone leave a tensor either forward uses
   without a counterpart (a loop applying one block on both sides adds nothing). A later read
   pairs only with a tensor used by the same kind of operation, and counts less than any pair of
   first uses, so it never takes a tensor from its first-use counterpart. Where the
   reference reads a tensor again, the candidate tensor paired there takes it too (one reference
   tensor feeds several candidate tensors: a port keeping the head its reference ties to the
   embedding); where the candidate reads a tensor again whose source is known, the reference
   tensors there feed nothing in the candidate (a block applied twice against two blocks: the first
   application's tensors feed it, the second's are unmatched with that reason, and a note says so).
   Later reads are then set aside: no later search pairs a tensor without this evidence.
   Modules called in another order: where the alignment leaves tensors both forwards use unpaired on
   both sides, the reference's modules (runs of tensors of one module) are put in the order of the
   candidate's modules of the same signature (kinds and shapes of their tensors), the k-th of one
   signature with the k-th (a feature pyramid running each lateral and then its smoothing conv, level
   by level, against a port running every lateral first), where both sides hold as many modules of
   that signature (``q``, ``k``, ``v`` per block against a fused ``qk`` and a ``v`` are no twins in
   turn: they would pair blocks crosswise); aligned again, that order is kept where it pairs more
   tensors.
   Parts next: a leftover tensor read only in parts is recorded again with each part a tensor of its
   own, read where its values are (the i-th of kernels stacked ``(n, out, in, kh, kw)`` by the i-th
   convolution), and the parts are paired like other leftovers. A candidate tensor whose parts all
   found counterparts takes them joined: concatenated along its dim (one norm over ``n`` branches
   applied by slices against ``n`` norms), or stacked (``concat`` then ``reshape``, and a ``permute``
   where the stacked dim is not the first), each choice checked on numbered values; read backward,
   it splits. A reference part is its tensor's slice. Parts that no entry joins so stay unmatched.
   Tensors first used together by one join (``torch.stack(list(kernels))`` feeding a grouped
   convolution) have no order of use among them: the k-th operand takes the k-th of the other side's
   tensors paired with the group, in that side's order of use, unless names settled it.
   Tables last: a leftover table one side keeps whole and the other in consecutive parts (a
   class row and a patch grid) takes its parts' slices; one with a few more leading rows than a
   leftover table of the other side, otherwise of its shape (a position table covering the class
   token against timm's ``no_embed_class`` table for the patches alone), is that table after as
   many zero rows (``insert``). A table whose first use takes one range of its rows
   (transformers' VitDet adds ``table[:, 1:]``, its class row never read) against a leftover table of
   those rows is that table with zero rows inserted where it is not read, marked ``unread``: read
   backward they are dropped whatever they hold; the other way round the rows the reference does not
   read are removed (``remove``, ``unread``), and read backward come back as zeros. Where both
   sides add their whole table, the shorter one takes the longer one's last rows (``slice`` with
   ``rest``: the patches'), and a note names the leading rows the candidate adds to no token.
   A leftover table the forward gathers rows of through an integer index (timm's Swin:
   ``table[relative_position_index]``; LeViT and EfficientFormer index a later dim,
   ``biases[:, idxs]``, with a 2-D index) takes the leftover tensor of the other side holding the
   gathered layout where it is added (a port keeping the bias ``(heads, N, N)`` whole): a ``gather``
   step and the re-layouts after it; the other way round each row of the table is read back from the
   first place that took it. Caches a model fills on its first eval forward (timm's
   ``attention_bias_cache``) are emptied for the run, so that it reads its tables again.
   Units stay whole: where leftovers were paired by shape alone (a block that runs its shortcut
   before the main branch on one side and after it on the other), a unit (a conv and its norm)
   whose tensors come from several reference units exchanges same-role tensors with another so
   that each takes all from the reference unit most of its elements come from.
   Data flow: where the order of use put same-shaped modules with a sibling's tensors (a port running
   a cross-branch exchange one branch at a time against one projecting both branches first), the
   operation each tensor's first use follows tells them apart: a pair agrees where the tensor of the
   operation its input derives from is mapped to that of its twin's. Candidate modules of one
   signature exchange their sources (with the modules reading them, pairwise) while that makes more
   pairs agree.
   Folded norms: two candidate tensors, one the forward multiplies by and one it adds (``x * scale +
   shift``), that alone take tensors of one reference batch norm (whatever else their module holds: a
   fused conv-and-norm module keeps its kernel beside them) take the folding of all that norm's
   tensors (a ``fold_norm`` step: ``scale = weight / sqrt(var + eps)``, ``shift =
   bias - mean * scale``) where the order of use alone paired them with two of its four.
4. Companions. Integer buffers (``num_batches_tracked``) follow the module their floating
   siblings were mapped to. Buffers each model computes for itself (index tables, RoPE periods)
   are listed as computed and never copied.
5. Verification. The reference's weights are transferred into a copy of the candidate and the two
   are compared with modules paired through the map. Where twin modules disagree, the ambiguous
   alternatives in and around the first disagreeing module (up to three enclosing modules: the block
   whose shortcut sits beside the branch holding it) are tried, those moving a tensor of that module
   first (a square matrix transposed, two same-shaped submodules swapped, a fused projection's
   output rows regrouped per head: ``(heads, 3, head_dim)`` against ``(3, heads, head_dim)``, whose
   output the comparison then reads in its twin's order; a weight of the disagreeing module itself
   with its input columns regrouped ``(a, b)`` -> ``(b, a)``, for every split of their number into
   two factors: an output projection reading heads concatenated ``(head_dim, heads)`` where its twin
   reads ``(heads, head_dim)``, a convolution after a channel shuffle), and kept when the module then
   agrees. Split projections holding slices of one fused tensor (or a fused tensor concatenated from
   split ones) are tried first in every other order, up to four of them: the order of use gives the
   first projection called the first rows, and a port may call ``key``, ``value``, then ``query``
   (transformers' ViT-style attentions); and with their slices taken per head (a ``qkv`` laid out
   ``(heads, kd + kd + vd)``: each its part of every head's rows, for each head count dividing the
   slices' bounds; these lose their twins, slices of the fused output's features); an order is kept only where the disagreeing module then
   agrees, and is then made in every other block holding siblings of the same names. So are split
   projections some of which take rows of a fused tensor and some a separate tensor of those rows'
   shape, their tensors moved between the two (timm's ConViT fuses ``qk`` and projects ``v`` after
   the scores, where a port projects ``q``, ``k``, ``v`` first), and the other way round a fused
   tensor's parts and a separate one. So are tensors joined where used (``torch.stack(list(kernels))``
   run as one grouped convolution), whose operand order pairs them with the other side's tensors in
   its order of use, where the reference may use its convolutions in another order than it joins
   their outputs: they take those tensors in every other order, up to four of them. A
   module whose twin differs in a numeric setting (``eps``, ``approximate``) disagrees whatever the
   weights: no alternative is tried there, and its conflict names the setting; nor around a module that owns no mapped tensor and received what
   its twin received (its own computation differs: a GELU against a tanh), nor around one whose
   op-level diagnosis finds another operation (not a product, whose result a weight layout can
   change) and nothing about values (a group norm where the twin applies a layer norm), or only
   code differences (an operation reading no weight applied on one side alone, a ReLU before the
   add; an argument one side passes and the other not, an attention mask), or a code difference a
   module stuck before showed too (every block of a port with one bug), nor around
   one holding a tensor the map leaves out (given other values for the check, below: no choice of
   weights fills it). An exchange costs a full comparison,
   so these save the most time where the models genuinely differ; a choice of layout for one tensor
   is first tried on the disagreeing module alone, re-run on the reference's inputs, and costs a
   comparison only where that module then agrees. What still disagrees is listed in ``conflicts``: a
   map is never accepted silently. Candidate tensors the forward reads but the map leaves out get
   other values in the copy first, so that a candidate already holding the right values there (a
   finished conversion being checked) cannot verify an incomplete map.

The result is a :class:`harness.weightmap.WeightMap`: data that reads both ways.
"""

from __future__ import annotations

import copy
import math
import re
import string
import weakref
from collections import Counter
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import combinations, permutations
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from harness.trace import ROOT, eager_module
from harness.checks import check_module
from harness.diagnose import REGROUPING, numeric_setting_differences
from harness.keymap import NORM_ROLES, invert_steps, shape_after, simplify_steps
from harness.weightmap import (NEVER_USED, STANDS_IN, Entry, Step, WeightMap, _forward_move, clear_weight_caches,
                               layout_steps, load_weight_map, owner_of, regrouped_columns, regrouped_rows,
                               shape_permutations, tied_copies)

__all__ = ["WeightMap", "Entry", "map_weights", "infer_map", "load_weight_map"]


@dataclass
class _Tensor:
    key: str
    shape: tuple[int, ...]
    kind: str  # "parameter" | "buffer"
    op: str  # the operation that used it first ("<unused>" if none)
    op_index: int
    source: int | None  # id of the op's first non-weight tensor argument (siblings share it)
    to_used: tuple[Step, ...] = ()  # the layout steps the forward applied before that use (w.t(), w.permute(...))
    # a tensor joined where used from stored tensors and zeros: (key or None for zeros, start, stop, steps from
    # that part back to the stored tensor) per part along ``dim``; ``key`` then names no stored tensor
    pieces: tuple[tuple[str | None, int, int, tuple[Step, ...]], ...] = ()
    dim: int = 0
    overwritten: tuple[tuple[int, int], ...] = ()  # rows (dim 0) the forward replaces by constants before use
    again: bool = False  # a later read of a tensor used before (a tied head, a block applied twice)
    # a table whose rows the forward gathers through an index (``table[relative_position_index]``): the
    # steps from the stored table to the layout the gathered values are added in; () if none
    gathered: tuple[Step, ...] = ()
    after: int = -1  # the latest operation using weights that the op's inputs derive from (-1: none)
    # the one range of rows (dim, start, stop) of the stored tensor its first use takes, the other rows never
    # read there (a position table's class row, ``table[:, 1:]``); None if it reads them all
    kept: tuple[int, int, int] | None = None
    # a part of a stored tensor the forward reads only in parts along one dim (``kernels[i]``, ``w[lo:hi]``):
    # (the stored key, dim, start, stop); ``shape`` is the part's, with that dim kept
    part: tuple[str, int, int, int] | None = None
    in_parts: int | None = None  # the dim along which the forward reads this tensor only in parts (None: whole)
    # the op's source when it is a part of an activation (``x.chunk(g, 1)[i]``, ``x[:, lo:hi]``): (a number
    # naming that activation, dim, start, stop); layers reading consecutive parts of one input are siblings
    source_part: tuple[int, int, int, int] | None = None

    @property
    def used_shape(self) -> tuple[int, ...]:
        """The shape the operation read: the stored shape through ``to_used``."""
        return shape_after(self.to_used, self.shape) if self.to_used else self.shape

    def from_used(self) -> list[Step]:
        """Steps from the layout the operation read back to the stored one."""
        return invert_steps(self.to_used, self.shape) if self.to_used else []


# Operations that only re-lay out a stored tensor or cast it (w.t(), w.permute(3, 2, 0, 1),
# qkv.reshape(3 * C, C), w.to(x.dtype)): a functional port applies them at the point of use. The use
# that places the tensor in the computation is the operation reading the result, in its layout.
_RELAYOUTS = {"t", "T", "mT", "transpose", "permute", "reshape", "view", "flatten", "unflatten", "squeeze",
              "unsqueeze", "contiguous", "to", "float", "double", "half", "bfloat16", "type_as", "clone", "detach",
              "getitem"}
# a weight read as the right operand of a matrix product is an (in, out) matrix: seen as F.linear's
# (out, in) through a transpose, so that ``x @ W`` and ``F.linear(x, W.t())`` match a linear layer
_MATMULS = {"matmul": 1, "mm": 1, "addmm": 2}  # operation -> the position of its right operand
_JOINS = {"cat", "concat", "concatenate"}  # a concatenation of weights only is a weight fused where used
# operations reading a tensor's shape or layout, not its values (``torch.zeros_like(v_bias)``): no use
_NO_VALUES = {"numel", "size", "dim", "ndimension", "nelement", "element_size", "stride", "storage_offset",
              "is_contiguous", "is_floating_point", "is_complex", "data_ptr", "len", "zeros_like", "ones_like",
              "empty_like", "full_like", "new_zeros", "new_ones", "new_empty", "new_full"}
_FILLS = {"zero_", "fill_"}  # in-place writes of a constant
_REPEATS = 32  # later reads of one tensor noted, at most: a block applied that many times more


@dataclass(frozen=True)
class _Linear:
    """How an operation acting as a linear layer reads its weight."""

    position: int  # the weight's position among the operation's tensor arguments
    steps: tuple[Step, ...]  # from the layout the operation reads to torch's (out, in)
    features: tuple[int, ...]  # the output's axes holding its out features, in the order they flatten


def _relayout_step(name: str, args: tuple, kwargs: dict, before: torch.Tensor, after: Any) -> list[Step] | None:
    """The layout steps an operation applied to ``before`` giving ``after``; None if it did more."""
    if not isinstance(after, torch.Tensor) or after.numel() != before.numel():
        return None
    if name in ("t", "T", "mT"):
        steps = [{"op": "transpose", "dims": [before.ndim - 2, before.ndim - 1]}] if before.ndim >= 2 else []
    elif name == "transpose":
        dims = [*args[1:], *kwargs.values()][:2]
        steps = [{"op": "transpose", "dims": [d % before.ndim for d in dims]}] if len(dims) == 2 else None
    elif name == "permute":
        dims = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:] or kwargs.get("dims", ())
        steps = [{"op": "permute", "dims": [d % before.ndim for d in dims]}]
    elif name in ("reshape", "view", "flatten", "unflatten", "squeeze", "unsqueeze") or _plain_index(name, args):
        steps = [] if tuple(after.shape) == tuple(before.shape) else [{"op": "reshape", "shape": list(after.shape)}]
    elif name == "getitem":  # a gather (w[[1, 0]]) may reorder the values it keeps
        steps = None
    else:  # casts and copies keep the layout
        steps = []
    if steps is None or after.dtype.is_floating_point != before.dtype.is_floating_point \
            or shape_after(steps, before.shape) != tuple(after.shape):
        return None
    return steps


def _kept_rows(args: tuple, shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(dim, start, stop) for indexing that keeps one contiguous range of rows along one dim and
    every value along the others (``table[:, 1:]``, ``w[..., :4]``); None for any other."""
    full = _index(args, len(shape))
    if full is None or not all(isinstance(i, slice) for i in full):
        return None
    cut = [(d, i.indices(n)) for d, (i, n) in enumerate(zip(full, shape)) if i.indices(n) != (0, n, 1)]
    if len(cut) != 1 or cut[0][1][2] != 1 or cut[0][1][0] >= cut[0][1][1]:
        return None
    dim, (start, stop, _) = cut[0]
    return dim, start, stop


def _index(args: tuple, ndim: int) -> list | None:
    """The index of ``tensor[index]`` (``args``: the tensor, the index) one item per dim, an Ellipsis
    spelled out as whole slices; None where it holds ``None`` (a new dim), several Ellipses, or more
    items than dims."""
    if len(args) != 2:
        return None
    items = args[1] if isinstance(args[1], tuple) else (args[1],)
    dots = sum(i is Ellipsis for i in items)
    if dots > 1 or any(i is None for i in items) or len(items) - dots > ndim:
        return None
    at = items.index(Ellipsis) if dots else len(items)
    return [*items[:at], *[slice(None)] * (ndim - len(items) + dots), *items[at + 1:]]


def _plain_index(name: str, args: tuple) -> bool:
    """Indexing that keeps every value in place (``b[None, :, None]``, ``w[0]`` of a dim of one)
    when it keeps their number: Nones, ints, slices and Ellipsis only."""
    if name != "getitem" or len(args) != 2:
        return False
    index = args[1] if isinstance(args[1], tuple) else (args[1],)
    return all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in index)


def _einsum_terms(equation: str, ndims: list[int]) -> tuple[list[str], str] | None:
    """The subscripts of each operand and of the output, ``...`` spelled out in unused letters
    (right-aligned, as einsum broadcasts it); None where they do not fit the operands."""
    equation = equation.replace(" ", "")
    inputs, arrow, output = equation.partition("->")
    terms = inputs.split(",")
    spare = [c for c in string.ascii_letters if c not in equation]
    widths = [n - len(t.replace("...", "")) for t, n in zip(terms, ndims)]
    width = max([w for t, w in zip(terms, widths) if "..." in t], default=0)
    if len(terms) != len(ndims) or width > len(spare) or any(w < 0 or w and "..." not in t for t, w in zip(terms, widths)):
        return None
    dots = "".join(spare[:width])
    terms = [t.replace("...", dots[width - w:]) for t, w in zip(terms, widths)]
    if arrow:
        output = output.replace("...", dots)
    else:  # implicit output: the broadcast dims, then every letter used once, in alphabetical order
        letters = "".join(terms)
        output = dots + "".join(sorted(c for c in set(letters) - set(dots) if letters.count(c) == 1))
    return terms, output


def _einsum_weight(equation: Any, tensors: list[torch.Tensor], is_weight: Callable[[int], bool]) -> _Linear | None:
    """An einsum of an input with one weight that contracts input features and produces output
    features (``'bnc,hdc->bhnd'``, Flax's ``'bnc,chd->bhnd'``) is a linear layer: the weight is
    read as torch's ``(out, in)`` through a permute putting its output letters first (in the
    output's order) and its contracted letters after (in the input's order), and a reshape."""
    terms = _einsum_terms(equation, [t.ndim for t in tensors]) if isinstance(equation, str) else None
    weights = [p for p in range(len(tensors)) if is_weight(p)]
    if terms is None or len(tensors) != 2 or len(weights) != 1:
        return None
    (position,), output = weights, terms[1]
    w, x = terms[0][position], terms[0][1 - position]
    contracted = sorted((c for c in w if c in x and c not in output), key=x.index)
    produced = sorted((c for c in w if c in output and c not in x), key=output.index)
    if not contracted or len(set(w)) != len(w) or len(contracted) + len(produced) != len(w):
        return None  # a letter shared with the output too (per-head weights) or summed away: no linear layer
    shape = tensors[position].shape
    dims = [w.index(c) for c in (*produced, *contracted)]
    steps = [] if dims == sorted(dims) else [{"op": "permute", "dims": dims}]
    matrix = [math.prod(shape[w.index(c)] for c in produced), math.prod(shape[w.index(c)] for c in contracted)]
    if list(shape_after(steps, shape)) != matrix:
        steps.append({"op": "reshape", "shape": matrix})
    return _Linear(position, tuple(steps), tuple(output.index(c) for c in produced))


def _linear_weight(name: str, args: tuple, tensors: list[torch.Tensor], is_weight: Callable[[int], bool],
                   result: Any) -> _Linear | None:
    """Where the operation acts as a linear layer on a weight: its weight and how it reads it."""
    if not isinstance(result, torch.Tensor) or result.ndim == 0:
        return None
    features = (result.ndim - 1,)
    if name in _MATMULS:
        position = _MATMULS[name]
        if position < len(tensors) and is_weight(position) and tensors[position].ndim == 2:
            return _Linear(position, ({"op": "transpose", "dims": [0, 1]},), features)
    elif name == "linear" and len(tensors) >= 2 and is_weight(1):
        return _Linear(1, (), features)
    elif name == "einsum" and args:
        return _einsum_weight(args[0], tensors, is_weight)
    return None


def _bias_steps(shape: tuple[int, ...], out_shape: tuple[int, ...], features: tuple[int, ...]) -> list[Step] | None:
    """Steps reading a tensor added to a linear layer's output as its ``(out,)`` bias: None unless
    it spans the output's feature axes exactly (and broadcasts over every other)."""
    if len(shape) > len(out_shape):
        return None
    padded = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    if any(d != (out_shape[a] if a in features else 1) for a, d in enumerate(padded)):
        return None
    size = math.prod(out_shape[a] for a in features)
    return [] if tuple(shape) == (size,) else [{"op": "reshape", "shape": [size]}]


def _joined_dim(dim: int, steps: Iterable[Step]) -> int | None:
    """Where dim ``dim`` of a tensor ends up through transposes and permutes; None through a reshape."""
    for step in steps:
        if step["op"] == "transpose":
            a, b = step["dims"]
            dim = b if dim == a else a if dim == b else dim
        elif step["op"] == "permute":
            dim = step["dims"].index(dim)
        else:
            return None
    return dim


class _FirstUse(TorchFunctionMode):
    """Notes the first torch operation using each watched tensor, seen through re-layouts."""

    def __init__(self, watched: dict[int, str], shapes: dict[str, tuple[int, ...]],
                 parted: dict[str, int] | None = None) -> None:
        super().__init__()
        self.watched = watched
        self.watched_shapes = dict(shapes)
        # key -> the dim along which the forward reads it only in parts: each part is a tensor of its own
        self.parted = parted or {}
        self.part_specs: dict[str, tuple[str, int, int, int]] = {}  # part key -> (stored key, dim, start, stop)
        self.taken: dict[str, set[tuple[int, int, int]]] = {}  # key -> the parts (dim, start, stop) taken of it
        self.taking: dict[str, set[int]] = {}  # key -> the op indices taking those parts
        self.seen: set[str] = set()
        # (key, op, op index, source id, to_used, again): ``again`` for a later read of a tensor used before
        self.uses: list[tuple[str, str, int, int | None, tuple[Step, ...], bool]] = []
        self.last: dict[str, int] = {}  # key -> the op index of its latest read
        self.repeats: dict[str, int] = {}  # key -> later reads noted
        self.ops = 0
        # id(re-laid-out tensor) -> (key, steps from the stored tensor, the tensor: kept alive so its id stays its own)
        self.relaid: dict[int, tuple[str, tuple[Step, ...], torch.Tensor]] = {}
        # id(concatenation of watched tensors) -> ((key, steps from the stored tensor) per piece, dim, the tensor)
        self.joined: dict[int, tuple[tuple[tuple[str, tuple[Step, ...]], ...], int, torch.Tensor]] = {}
        # id(output of a linear layer without bias) -> (a weak reference to it, op index, source id, feature axes):
        # outputs are activations, not kept alive; the reference tells a reused id
        self.outputs: dict[int, tuple[Any, int, int | None, tuple[int, ...]]] = {}
        self.first_touch: dict[str, tuple[str, int]] = {}  # key -> (op, op index) of a re-layout never read after
        # a slice of a watched tensor, its use deferred by one operation: (slice, held, op index, rows)
        self.pending: tuple[torch.Tensor, tuple, int, tuple[int, int]] | None = None
        self.overwritten: dict[str, list[tuple[int, int]]] = {}  # key -> rows its copy gets constants in before use
        self.kept: dict[str, tuple[int, int, int]] = {}  # key -> the rows (dim, start, stop) its first use takes
        # name of a tensor joined from watched tensors and zeros -> (its shape, dim, (key or None, start, stop,
        # steps from the stored tensor) per part)
        self.fused: dict[str, tuple[tuple[int, ...], int, tuple]] = {}
        # id(rows gathered from a watched table, or a re-layout of them) -> (key, steps from the stored table,
        # the tensor: kept alive so its id stays its own); key -> those steps where the values are added
        self.gathers: dict[int, tuple[str, tuple[Step, ...], torch.Tensor]] = {}
        self.gathered: dict[str, tuple[Step, ...]] = {}
        # id(activation) -> (a weak reference to it, the latest op index using weights it derives from); and
        # op index -> that of its inputs: a layer reading what an earlier one computed is no sibling of it
        self.derived: dict[int, tuple[Any, int]] = {}
        self.after: dict[int, int] = {}
        # id(part of an activation) -> (a weak reference to it, (the activation's number, dim, start, stop)); id of
        # an activation parts were taken of -> (a weak reference to it, its number); op index -> its source's part
        self.activation_parts: dict[int, tuple[Any, tuple[int, int, int, int]]] = {}
        self.activations: dict[int, tuple[Any, int]] = {}
        self.source_parts: dict[int, tuple[int, int, int, int]] = {}
        self.activations_seen = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", None) or str(func)
        if name == "__get__":  # attribute reads (.dtype, .shape) use no values; .T and .mT re-lay out
            name = getattr(getattr(func, "__self__", None), "__name__", name)
            if name not in ("T", "mT"):
                return func(*args, **kwargs)
        result = func(*args, **kwargs)
        if name.strip("_") in _NO_VALUES or self._fills_slice(name, args):
            return result
        self._flush()
        leaves = _tensor_leaves((args, kwargs))
        self._follow_gathers(name.strip("_"), args, kwargs, leaves, result)
        held = [(t, self._held(t)) for t in leaves]
        joined = {p: self.joined[id(t)] for p, t in enumerate(leaves) if self._joined(t)}
        after = max((self._after(t) for p, (t, h) in enumerate(held) if h is None and p not in joined), default=-1)
        if not any(h for _, h in held) and not joined:
            self._derive(result, after)
            self._note_activation_parts(name.strip("_"), args, kwargs, result)
            return result
        self.ops += 1
        self.after[self.ops] = after
        name = name.strip("_")
        first = held[0][1] if name in _RELAYOUTS and args and args[0] is held[0][0] else None
        steps = _relayout_step(name, args, kwargs, args[0], result) if first is not None else None
        if steps is not None:
            key, before, _ = first
            self.relaid[id(result)] = (key, (*before, *steps), result)
            self.first_touch.setdefault(key, (name, self.ops))
            return result
        if self._take_parts(name, args, kwargs, result):
            return result
        if name == "getitem" and first is not None and self._hold_slice(args, result, first):
            return result
        if name in _JOINS and self._join(args, kwargs, result):
            return result
        source = next((id(t) for p, (t, h) in enumerate(held) if h is None and p not in joined), None)
        part = self.activation_parts.get(source) if source is not None else None
        if part is not None and part[0]() is not None:  # alive: the id is still its own
            self.source_parts[self.ops] = part[1]
        self._derive(result, self.ops)
        if name == "getitem" and first is not None and not first[1] and first[0] not in self.seen:
            self._keep(first[0], _kept_rows(args, tuple(args[0].shape)))
        if self._bias(name, kwargs, held):
            return result
        linear = _linear_weight(name, args, leaves, lambda p: held[p][1] is not None or p in joined, result)
        if not (joined and linear is not None and self._siblings(linear, held, joined, source)):
            self._record(name, held, linear, source, joined)
        if linear is not None and sum(h is not None for _, h in held) == 1 and not joined:
            self.outputs[id(result)] = (weakref.ref(result), self.ops, source, linear.features)
        return result

    def _note_activation_parts(self, name: str, args: tuple, kwargs: dict, result: Any) -> None:
        """Parts taken of an activation along one dim (``x.chunk(g, 1)``, ``x[:, lo:hi]``): layers each
        reading one of them may be one layer reading the whole (convolutions per group, a grouped one)."""
        if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
            return
        taken = _parts_taken(name, args, kwargs, result)
        if not taken:
            return
        known = self.activations.get(id(args[0]))
        if known is None or known[0]() is not args[0]:
            self.activations_seen += 1
            known = (weakref.ref(args[0]), self.activations_seen)
            self.activations[id(args[0])] = known
        for dim, start, stop, piece in taken:
            self.activation_parts[id(piece)] = (weakref.ref(piece), (known[1], dim, start, stop))

    def _after(self, t: torch.Tensor) -> int:
        found = self.derived.get(id(t))
        return found[1] if found is not None and found[0]() is t else -1

    def _derive(self, result: Any, after: int) -> None:
        """Note what the outputs of an operation derive from (activations: weakly held, ids reused)."""
        if after < 0:
            return
        for t in _tensor_leaves(result):
            self.derived[id(t)] = (weakref.ref(t), after)

    def _follow_gathers(self, name: str, args: tuple, kwargs: dict, leaves: list, result: Any) -> None:
        """Rows gathered from a watched table through an integer index (``table[index.view(-1)]``) are
        followed through their re-layouts (``.view(N, N, -1).permute(2, 0, 1)``) to the operation adding
        them (to attention scores): where the other model keeps the gathered layout as its own tensor,
        those steps map the table onto it. The table's own use is noted as ever."""
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        held = self._held(source) if source is not None else None
        if name == "getitem" and held is not None and not held[1] and isinstance(result, torch.Tensor):
            steps = _gather_steps(args, result)
            if steps is not None:
                self.gathers[id(result)] = (held[0], steps, result)
            return
        for t in leaves:
            found = self.gathers.get(id(t))
            if found is None or found[2] is not t:
                continue
            key, steps, _ = found
            relaid = _relayout_step(name, args, kwargs, t, result) if name in _RELAYOUTS and source is t else None
            if relaid is not None:
                self.gathers[id(result)] = (key, (*steps, *relaid), result)
            elif name in _ADDS:
                self.gathered.setdefault(key, steps)

    def _record(self, name: str, held: list, linear: _Linear | None, source: int | None, joined: dict) -> None:
        """The tensors this operation uses first, a linear layer's weight in torch's layout."""
        at = linear.position if linear is not None else None
        op = "linear" if name in _MATMULS or linear is not None else name
        # a product's matrix first, then its bias (addmm(b, x, W)): a linear layer's order of use
        for position in sorted(range(len(held)), key=lambda position: position != at):
            h = held[position][1]
            steps = linear.steps if position == at else ()
            if h is not None:
                self._use(h[0], op, self.ops, source, (*h[1], *steps), again=h[0] in self.seen)
            elif position in joined and any(key is None for key, _ in joined[position][0]):
                self._use_fused(joined[position], op, source, steps)

    def _use_fused(self, joined: tuple, op: str, source: int | None, steps: tuple[Step, ...]) -> None:
        """A tensor joined where used from watched tensors and zeros (``torch.cat([q_bias, zeros,
        v_bias])``) is used whole, like a stored fused tensor: its parts are cut from whatever the
        other side's matching tensor is. Not when a part was used before (it is mapped there)."""
        parts, dim, tensor, sizes = joined
        if any(key in self.seen for key, _ in parts if key is not None):
            return
        name = f"cat({', '.join(key or '<zeros>' for key, _ in parts)})"
        starts = [sum(sizes[:k]) for k in range(len(sizes))]
        self.fused[name] = (tuple(tensor.shape), dim,
                            tuple((key, a, a + n, before) for (key, before), a, n in zip(parts, starts, sizes)))
        self.seen.update(key for key, _ in parts if key is not None)
        self._use(name, op, self.ops, source, steps)

    def _take_parts(self, name: str, args: tuple, kwargs: dict, result: Any) -> bool:
        """Parts taken of a stored tensor along one dim (``kernels[i]``, ``w[lo:hi]``, ``w.unbind(0)``)
        are noted; where the forward reads that tensor only so (:meth:`read_in_parts`), each part is held as a
        tensor of its own, read where its values are. True if the parts are held so."""
        key = self.watched.get(id(args[0])) if args and isinstance(args[0], torch.Tensor) else None
        taken = _parts_taken(name, args, kwargs, result) if key is not None else None
        if not taken:
            return False
        if key not in self.parted:
            self.taken.setdefault(key, set()).update((dim, start, stop) for dim, start, stop, _ in taken)
            self.taking.setdefault(key, set()).add(self.ops)
            return False
        for dim, start, stop, piece in taken:
            part = _part_key(key, dim, start, stop)
            shape = tuple(stop - start if d == dim else n for d, n in enumerate(self.watched_shapes[key]))
            self.part_specs[part] = (key, dim, start, stop)
            self.watched_shapes[part] = shape
            steps = () if tuple(piece.shape) == shape else ({"op": "reshape", "shape": list(piece.shape)},)
            self.relaid[id(piece)] = (part, steps, piece)
        return True

    def read_in_parts(self) -> dict[str, int]:
        """The tensors the forward read only in parts, tiling them along one dim (key -> that dim):
        never whole, nor re-laid out, and in at least two parts."""
        whole = {key for key, _, index, *_ in self.uses if index not in self.taking.get(key, ())}
        out = {}
        for key, taken in self.taken.items():
            dims = {dim for dim, _, _ in taken}
            if key in whole or len(dims) != 1 or len(taken) < 2:
                continue
            dim = dims.pop()
            cuts = sorted((start, stop) for _, start, stop in taken)
            if cuts[0][0] == 0 and cuts[-1][1] == self.watched_shapes[key][dim] \
                    and all(stop == start for (_, stop), (start, _) in zip(cuts, cuts[1:])):
                out[key] = dim
        return out

    def _hold_slice(self, args: tuple, result: Any, held: tuple) -> bool:
        """A slice of rows of a watched tensor (or of its copy) may be written rather than read:
        ``b = qkv_bias.clone(); b[C:2 * C].zero_()``. Its use waits for the next operation."""
        index = args[1] if len(args) == 2 and isinstance(args[1], tuple) else args[1:]
        if not isinstance(result, torch.Tensor) or len(index) < 1 or not isinstance(index[0], slice) \
                or not all(isinstance(i, slice) and i == slice(None) or i is Ellipsis for i in index[1:]):
            return False
        start, stop, stride = index[0].indices(args[0].shape[0])
        if stride != 1:
            return False
        self.pending = (result, held, self.ops, (start, stop))
        return True

    def _fills_slice(self, name: str, args: tuple) -> bool:
        """Constants written into the slice just taken: those rows are replaced, not read. True if so."""
        if self.pending is None or name not in _FILLS or not args or args[0] is not self.pending[0]:
            return False
        _, (key, steps, _), _, rows = self.pending
        self.pending = None
        if not steps:  # rows of the stored layout
            self.overwritten.setdefault(key, []).append(rows)
        return True

    def _flush(self) -> None:
        """A slice taken and then read: the tensor counts as used where it was sliced."""
        if self.pending is not None:
            _, (key, steps, _), index, (start, stop) = self.pending
            self.pending = None
            if key not in self.seen:
                if not steps:
                    self._keep(key, (0, start, stop))
                self._use(key, "getitem", index, None, steps)

    def _keep(self, key: str, rows: tuple[int, int, int] | None) -> None:
        """Note that the first use of ``key`` takes only ``rows`` of it (all of them: nothing noted)."""
        if rows is not None and rows[1:] != (0, self.watched_shapes[key][rows[0]]):
            self.kept[key] = rows

    def _use(self, key: str, op: str, index: int, source: int | None, to_used: tuple[Step, ...],
             again: bool = False) -> None:
        """Note a read of ``key``: its first use, or (``again``) a later read by another operation,
        which may be where the other model reads a tensor of its own (a tied output head)."""
        if again:
            if self.last.get(key) == index or self.repeats.get(key, 0) >= _REPEATS:
                return  # one operation reading it twice; or a loop, whose later reads pair nothing new
            self.repeats[key] = self.repeats.get(key, 0) + 1
        self.seen.add(key)
        self.last[key] = index
        self.uses.append((key, op, index, source, to_used, again))

    def _held(self, t: torch.Tensor) -> tuple[str, tuple[Step, ...], Any] | None:
        """(key, steps from the stored tensor) when ``t`` is a watched tensor or a re-layout of one."""
        key = self.watched.get(id(t))
        if key is not None:
            return key, (), None
        return self.relaid.get(id(t))

    def _joined(self, t: torch.Tensor) -> bool:
        return id(t) in self.joined and self.joined[id(t)][2] is t

    def _join(self, args: tuple, kwargs: dict, result: Any) -> bool:
        """A concatenation of watched tensors only (``torch.cat([wq, wk, wv])``) is a fused weight
        made at the point of use: noted, its pieces placed where it is read. True if it is one."""
        tensors = args[0] if args else kwargs.get("tensors")
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        if not isinstance(tensors, (list, tuple)) or len(tensors) < 2 or not isinstance(dim, int) \
                or not isinstance(result, torch.Tensor) or result.ndim == 0 \
                or not all(isinstance(t, torch.Tensor) and t.ndim == result.ndim for t in tensors):
            return False
        pieces = [self._held(t) for t in tensors]
        # zeros joined in stand for a part the model leaves out (timm's fixed key bias of Swin V2, BEiT)
        if not any(pieces) or any(p is None and not _zeros(t) for p, t in zip(pieces, tensors)):
            return False
        dim %= result.ndim
        self.joined[id(result)] = (tuple((p[0], p[1]) if p else (None, ()) for p in pieces), dim, result,
                                   tuple(t.shape[dim] for t in tensors))
        for p in pieces:
            if p is not None:
                self.first_touch.setdefault(p[0], ("cat", self.ops))
        return True

    def _bias(self, name: str, kwargs: dict, held: list) -> bool:
        """A tensor first used by adding it to the output of a linear layer without bias
        (``x @ W + b``, an einsum's output plus ``b[None, :, None, :]``) is that layer's bias:
        used by the same operation, read as ``(out,)``. True if it was one."""
        if name not in ("add", "iadd", "radd") or kwargs or len(held) != 2:
            return False
        for (out, mine), (bias, h) in (held, held[::-1]):
            found = self.outputs.get(id(out)) if mine is None and h is not None else None
            if found is None or found[0]() is not out:
                continue
            steps = _bias_steps(tuple(bias.shape), tuple(out.shape), found[3])
            if steps is not None:
                self._use(h[0], "linear", found[1], found[2], (*h[1], *steps), again=h[0] in self.seen)
                return True
        return False

    def _siblings(self, linear: _Linear, held: list, joined: dict, source: int | None) -> bool:
        """A linear layer reading weights concatenated along its outputs (``F.linear(x,
        torch.cat([wq, wk, wv]), torch.cat([bq, bk, bv]))``) is as many sibling layers on one input:
        the k-th pieces count as used by the k-th. True if it was one."""
        pieces: dict[int, list[tuple[str, tuple[Step, ...]]]] = {}
        for position, (parts, dim) in ((p, j[:2]) for p, j in joined.items()):
            steps = linear.steps if position == linear.position else ()
            if _joined_dim(dim, steps) != 0 or any(key is None for key, _ in parts):
                return False  # joined along the inputs, or reshaped: no sibling reads one piece
            pieces[position] = [(key, (*before, *steps)) for key, before in parts]
        if len({len(parts) for parts in pieces.values()}) != 1:
            return False
        order = sorted(pieces, key=lambda position: (position != linear.position, position))
        after = self.after[self.ops]
        for k in range(len(pieces[order[0]])):
            self.ops += 1
            self.after[self.ops] = after
            for key, steps in (pieces[position][k] for position in order):
                if key not in self.seen:
                    self._use(key, "linear", self.ops, source, steps)
        rest = [h for p, (_, h) in enumerate(held) if h is not None and p not in pieces and h[0] not in self.seen]
        self.ops += bool(rest)
        for key, steps, _ in rest:  # a bias left whole: after the siblings, matched on its own
            self._use(key, "linear", self.ops, source, steps)
        return True

    def finish(self) -> None:
        """Tensors only ever re-laid out count as used where they were first touched."""
        self._flush()
        for key, (op, index) in self.first_touch.items():
            if key not in self.seen:
                self.seen.add(key)
                self.uses.append((key, op, index, None, (), False))
        self.uses.sort(key=lambda use: use[2])  # stable: argument order within one operation
        self.relaid.clear()
        self.joined.clear()
        self.outputs.clear()
        self.gathers.clear()
        self.derived.clear()
        self.activation_parts.clear()
        self.activations.clear()


# operations adding gathered rows to what they are a bias of (attention scores, directly or as a mask)
_ADDS = {"add", "iadd", "radd", "scaled_dot_product_attention", "baddbmm"}


def _gather_steps(args: tuple, result: torch.Tensor) -> tuple[Step, ...] | None:
    """A ``gather`` step (and the reshape to the result's shape) for ``table[index]``: one integer
    tensor of any rank indexing one dim, the dims before it taken whole (``table[:, index]``, LeViT's
    and EfficientFormer's ``biases[:, idxs]``; ``table[..., index]``), as those after it; None for any
    other indexing."""
    full = _index(args, args[0].ndim) if args and isinstance(args[0], torch.Tensor) else None
    at = [d for d, item in enumerate(full or ()) if isinstance(item, torch.Tensor)]
    if len(at) != 1 or not all(item == slice(None) for d, item in enumerate(full) if d != at[0]):
        return None
    dim, index = at[0], full[at[0]]
    if index.dtype not in (torch.long, torch.int) or index.numel() == 0:
        return None
    rows = index.reshape(-1).tolist()
    if min(rows) < 0:
        return None
    flat = ({"op": "gather", "dim": dim, "index": rows},)
    return flat if index.ndim == 1 else (*flat, {"op": "reshape", "shape": list(result.shape)})


_SPLITS = {"unbind", "split", "chunk", "split_with_sizes", "tensor_split"}  # parts along one dim, all at once


def _parts_taken(name: str, args: tuple, kwargs: dict, result: Any) -> list[tuple[int, int, int, torch.Tensor]] | None:
    """The parts ``(dim, start, stop, tensor)`` an operation takes of ``args[0]`` along one dim, every
    value of the others kept: an integer index or a slice (``w[i]``, ``w[:, lo:hi]``), ``select``,
    ``narrow``, ``unbind``, ``split``, ``chunk``; None for any other operation."""
    source = args[0]
    shape = tuple(source.shape)
    if name in _SPLITS:
        pieces = list(result) if isinstance(result, (tuple, list)) else []
        dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) if name == "unbind" \
            else (args[2] if len(args) > 2 else kwargs.get("dim", 0))
        if not pieces or not isinstance(dim, int) or not all(isinstance(p, torch.Tensor) for p in pieces):
            return None
        dim %= len(shape)
        kept = name != "unbind"
        sizes = [p.shape[dim] if kept else 1 for p in pieces]
        if sum(sizes) != shape[dim] or any(p.ndim != len(shape) - (not kept) for p in pieces):
            return None
        starts = [sum(sizes[:k]) for k in range(len(sizes))]
        return [(dim, a, a + n, p) for a, n, p in zip(starts, sizes, pieces) if n]
    if not isinstance(result, torch.Tensor):
        return None
    if name in ("select", "narrow") and len(args) >= 3 and all(isinstance(a, int) for a in args[1:]):
        dim = args[1] % len(shape)
        start = args[2] % shape[dim]
        stop = start + (1 if name == "select" else args[3] if len(args) > 3 else 0)
        return [(dim, start, stop, result)] if stop > start else None
    full = _index(args, len(shape)) if name == "getitem" else None
    if full is None or not all(isinstance(i, (int, slice)) for i in full):
        return None
    cut = [(d, i) for d, (i, n) in enumerate(zip(full, shape)) if not isinstance(i, slice) or i.indices(n) != (0, n, 1)]
    if len(cut) != 1:
        return None
    dim, item = cut[0]
    if isinstance(item, int):
        start = item % shape[dim]
        return [(dim, start, start + 1, result)]
    start, stop, stride = item.indices(shape[dim])
    return [(dim, start, stop, result)] if stride == 1 and stop > start else None


def _part_key(key: str, dim: int, start: int, stop: int) -> str:
    """The name of a part of a stored tensor: ``kernels[0:1]``, ``w[:, 4:8]``."""
    return f"{key}[{':, ' * dim}{start}:{stop}]"


def _zeros(t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.numel() > 0 and not bool(t.any())


def _tensor_leaves(value: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []

    def visit(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (tuple, list)):
            for item in v:
                visit(item)
        elif isinstance(v, dict):
            for item in v.values():
                visit(item)

    visit(value)
    return out


def _parts_of(model: nn.Module, run: Callable[[nn.Module], Any], tensors: list[_Tensor],
              used: set[int]) -> list[_Tensor]:
    """The parts of the tensors of ``tensors`` left without a counterpart that the forward reads
    only in parts (each a tensor of its own, read where its values are: ``kernels[i]`` by the i-th
    convolution), from another run of ``model``; the tensors themselves are marked used."""
    parted = {t.key: t.in_parts for k, t in enumerate(tensors) if k not in used and t.in_parts is not None}
    if not parted:
        return []
    used.update(k for k, t in enumerate(tensors) if t.key in parted)
    return [t for t in _first_uses(model, run, parted)[0] if t.part is not None]


def _first_uses(model: nn.Module, run: Callable[[nn.Module], Any],
                parted: dict[str, int] | None = None) -> tuple[list[_Tensor], dict[str, str]]:
    """Learned tensors in first-use order, and the computed buffers (key -> reason). A tensor the
    forward reads only in parts says so (``in_parts``); with ``parted`` (key -> dim) the run is
    recorded with each part of those tensors as a tensor of its own (``part``), read where its values are."""
    state_keys = set(model.state_dict(keep_vars=True))
    learned: dict[str, torch.Tensor] = {}
    computed: dict[str, str] = {}
    for key, p in model.named_parameters():
        learned[key] = p
    for key, b in model.named_buffers():
        if key not in state_keys:
            continue  # non-persistent: never part of a checkpoint
        if b.is_floating_point() or b.is_complex():
            learned[key] = b
        else:
            computed[key] = "integer buffer computed by the model (index table or counter)"
    watched = {id(t): k for k, t in learned.items()}
    recorder = _recorded(model, run, _FirstUse(watched, {k: tuple(t.shape) for k, t in learned.items()}, parted))
    in_parts = recorder.read_in_parts()
    shapes = recorder.watched_shapes
    kinds = {k: "parameter" for k, _ in model.named_parameters()}
    kinds.update({part: kinds.get(key, "buffer") for part, (key, *_) in recorder.part_specs.items()})
    out = [_Tensor(k, shapes[k], kinds.get(k, "buffer"), op, i, src, steps,
                   overwritten=tuple(recorder.overwritten.get(k, ())), again=again,
                   gathered=recorder.gathered.get(k, ()) if not again else (), after=recorder.after.get(i, -1),
                   kept=recorder.kept.get(k) if not again else None, part=recorder.part_specs.get(k),
                   in_parts=in_parts.get(k), source_part=recorder.source_parts.get(i))
           if k in shapes else replace(_fused_tensor(k, recorder.fused[k], shapes, kinds, (op, i, src, steps)),
                                       after=recorder.after.get(i, -1))
           for k, op, i, src, steps, again in recorder.uses]
    tail = recorder.ops + 1
    for key in [*(k for k in learned if k not in (parted or {})), *recorder.part_specs]:
        if key not in recorder.seen:
            out.append(_Tensor(key, shapes[key], kinds.get(key, "buffer"), "<unused>", tail, None,
                               part=recorder.part_specs.get(key)))
            tail += 1
    return out, computed


def _recorded(model: nn.Module, run: Callable[[nn.Module], Any], recorder: _FirstUse) -> _FirstUse:
    """``recorder`` after a run of ``model`` under it."""
    # a tensor a model derives from its weights on its first eval forward and keeps (timm's
    # attention_bias_cache) hides their use from later runs: its caches are emptied for this run
    caches = {(m, n): dict(v) for m in model.modules() for n, v in vars(m).items()
              if "cache" in n.lower() and isinstance(v, dict)}
    clear_weight_caches(model)
    with torch.no_grad(), recorder:
        run(model)
    recorder.finish()
    for (m, n), held in caches.items():  # leave the model as it was
        getattr(m, n).clear()
        getattr(m, n).update(held)
    return recorder


def _fused_tensor(name: str, fused: tuple, shapes: dict[str, tuple[int, ...]], kinds: dict[str, str],
                  use: tuple) -> _Tensor:
    """The tensor a model joins where used from stored tensors and zeros, as one tensor."""
    shape, dim, parts = fused
    pieces = tuple((key, start, stop, tuple(invert_steps(before, shapes[key])) if before else ())
                   if key is not None else (None, start, stop, ()) for key, start, stop, before in parts)
    kind = kinds.get(next(key for key, *_ in parts if key is not None), "buffer")
    return _Tensor(name, shape, kind, *use, pieces=pieces, dim=dim)


# -- sequence alignment -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Unit:
    """One tensor, or a composite of sibling tensors concatenated along dim 0."""

    members: tuple[int, ...]  # indices into the side's tensor list
    shape: tuple[int, ...]
    # (start row, rows) of the parts no member holds: the zero bias of a sibling layer without one
    zeros: tuple[tuple[int, int], ...] = ()


def _composites(tensors: list[_Tensor], *, stored: bool) -> dict[int, list[tuple[int, list[_Unit]]]]:
    """For each start index: (end index, composite units) for runs of sibling operations.

    Siblings: consecutive operations of the same kind reading the same source tensor (linear
    layers: any inputs; others: consecutive parts of one, a convolution per group), whose i-th
    tensors agree in every dim but the first, in the layout the operations read. ``stored``: only
    tensors read as stored (a concat of the stored tensors is the composite).
    """
    ops: list[list[int]] = []
    for i, t in enumerate(tensors):
        if t.op != "<unused>" and ops and tensors[ops[-1][0]].op_index == t.op_index:
            ops[-1].append(i)
        else:
            ops.append([i])
    out: dict[int, list[tuple[int, list[_Unit]]]] = {}
    for s in range(len(ops)):
        head = tensors[ops[s][0]]
        if head.op == "<unused>" or head.source is None:
            continue
        for e in range(s + 1, len(ops)):
            t = tensors[ops[e][0]]
            # a sibling may lack a tensor the others have (a key projection without bias): the
            # composites are made of the tensors every sibling has, in argument order
            # linear layers on different inputs may be one fused projection on the other side: a
            # cross-attention's query from one sequence and its keys and values from another
            # (``nn.MultiheadAttention``'s ``in_proj_weight`` against separate ``q`` and ``kv``)
            same = (t.op == head.op and (t.source == head.source or t.op == "linear"
                                         or _next_part(tensors[ops[e - 1][0]], t))
                    and t.after < head.op_index  # a fused operation computes its parts at once: none reads another's
                    and ops[e][0] == ops[e - 1][-1] + 1
                    and all(tensors[a].used_shape[1:] == tensors[b].used_shape[1:] and tensors[a].kind == tensors[b].kind
                            and tensors[a].again == tensors[b].again == head.again
                            and not tensors[a].pieces and not tensors[b].pieces
                            and len(tensors[a].shape) >= 1 and not (stored and (tensors[a].to_used or tensors[b].to_used))
                            for a, b in zip(ops[s], ops[e])))
            if not same:
                break
            if _cuts_siblings(tensors, ops, s, e):
                continue
            units = []
            for pos in range(min(len(ops[k]) for k in range(s, e + 1))):
                members = tuple(ops[k][pos] for k in range(s, e + 1))
                first = tensors[members[0]].used_shape
                units.append(_Unit(members, (sum(tensors[m].used_shape[0] for m in members), *first[1:])))
            bias = _bias_with_zeros(tensors, ops[s:e + 1])
            out.setdefault(ops[s][0], []).append((ops[e][-1] + 1, units + [bias] * (bias is not None)))
    return out


def _next_part(a: _Tensor, b: _Tensor) -> bool:
    """Whether ``b``'s operation reads the part of an activation right after the part ``a``'s reads
    (convolutions each on its group of channels, ``x.chunk(g, 1)``, against one grouped convolution)."""
    return a.source_part is not None and b.source_part is not None and a.source_part[:2] == b.source_part[:2] \
        and a.source_part[3] == b.source_part[2]


def _cuts_siblings(tensors: list[_Tensor], ops: list[list[int]], s: int, e: int) -> bool:
    """Whether the run of operations ``s..e``, reading several inputs, parts two neighbouring layers that
    read one input: a class attention projecting its query from the class token and then its keys and
    values from all tokens is a query layer beside a fused key-value layer, never a fused query-key
    layer beside a value layer. A run reading one input, or holding such pairs whole (every
    projection of a cross-attention against one ``in_proj_weight``), cuts nothing."""
    def one_input(a: int, b: int) -> bool:
        x, y = tensors[ops[a][0]], tensors[ops[b][0]]
        return x.op == y.op and x.source == y.source and ops[b][0] == ops[a][-1] + 1

    if len({tensors[ops[k][0]].source for k in range(s, e + 1)}) == 1:
        return False
    return (s > 0 and one_input(s - 1, s)) or (e + 1 < len(ops) and one_input(e, e + 1))


def _joined_steps(sizes: list[int], zeros: Iterable[tuple[int, int]], dim: int) -> list[Step]:
    """Steps joining stored parts of ``sizes`` along ``dim`` with blocks of zeros ``(start, size)``
    between them: the parts concatenated, then each block inserted where it sits in the whole."""
    steps: list[Step] = [{"op": "concat", "dim": dim, "sizes": list(sizes)}] if len(sizes) > 1 else []
    return steps + [{"op": "insert", "dim": dim, "start": start, "size": size, "value": 0.0} for start, size in zeros]


def _bias_with_zeros(tensors: list[_Tensor], ops: list[list[int]]) -> _Unit | None:
    """Sibling linear layers some of which have no bias (BEiT's key projection): their bias is the
    others' biases with zeros in the rows of those without, an affine map with no constant term.
    None unless each layer reads a weight, then at most a bias of its output size."""
    if tensors[ops[0][0]].op != "linear" or {len(members) for members in ops} != {1, 2}:
        return None
    members, zeros, start = [], [], 0
    for op in ops:
        rows = tensors[op[0]].used_shape[0]
        if len(op) == 2:
            if tensors[op[1]].used_shape != (rows,):
                return None
            members.append(op[1])
        else:
            zeros.append((start, rows))
        start += rows
    return _Unit(tuple(members), (start,), tuple(zeros))


def _past_zeros(start: int, zeros: Iterable[tuple[int, int]]) -> int:
    """The first row at or after ``start`` outside the blocks ``(start, rows)`` no sibling holds: the
    reference's rows there (a key bias) are not taken by a sibling layer without bias."""
    blocks = dict(zeros)
    while start in blocks:
        start += blocks[start]
    return start


@lru_cache(maxsize=4096)  # the alignment asks for every pair of same-shaped tensors: a few hundred names each
def _words(key: str) -> frozenset[str]:
    return frozenset(w for w in re.split(r"[._]", key.split("[", 1)[0]) if w and not w.isdigit())


def _bonus(c: _Tensor, r: _Tensor) -> float:
    bonus = 0.2 if c.op == r.op else 0.0
    if _leaf(c.key) == _leaf(r.key):
        bonus += 0.1
    wc, wr = _words(c.key), _words(r.key)
    if wc and wr:
        bonus += 0.05 * len(wc & wr) / len(wc | wr)
    return bonus


_OTHER_KIND = 0.6  # what pairing a parameter with a buffer costs: more than a pair of one kind gains by its names
# what a pair counts where one side reads a tensor again (a tied head, a shared block): less than any
# pair of first uses, so that a later read never takes a tensor from its first-use counterpart
_AGAIN = 0.5


def _pair_weight(c: _Tensor, r: _Tensor) -> float:
    """1 for two first uses; ``_AGAIN`` where either reads a tensor again and both operations are
    one kind (the evidence that the two reads play one role); 0 (no pair) otherwise. A tensor the
    forward never reads pairs only with one the other never reads: placed by its state-dict order,
    it would take what the other reads by shape alone (a branch the candidate drops: its norm's
    weight taking the reference's running mean), where leaving it out says what happened."""
    if (c.op == "<unused>") != (r.op == "<unused>"):
        return 0.0
    if not (c.again or r.again):
        return 1.0
    return _AGAIN if c.op == r.op and c.op != "<unused>" else 0.0


def _align(cand: list[_Tensor], ref: list[_Tensor]) -> list[tuple[list[int], list[int], list[Step], str]]:
    """Order-preserving pairing maximizing matched tensors (see the module docstring).

    Returns (candidate indices, reference indices, steps, how): ``how`` is ``one`` (1:1),
    ``concat`` (one candidate tensor from several reference tensors) or ``slice`` (several
    candidate tensors from one reference tensor).
    """
    n, m = len(cand), len(ref)
    comp_r, comp_c = _composites(ref, stored=True), _composites(cand, stored=False)
    neg = -1.0
    best = [[neg] * (m + 1) for _ in range(n + 1)]
    back: list[list[Any]] = [[None] * (m + 1) for _ in range(n + 1)]
    best[0][0] = 0.0
    layout_cache: dict[tuple, Any] = {}

    def layout(target: tuple[int, ...], source: tuple[int, ...]):
        key = (target, source)
        if key not in layout_cache:
            layout_cache[key] = layout_steps(target, source)
        return layout_cache[key]

    def push(i2: int, j2: int, value: float, how: Any) -> None:
        if value > best[i2][j2] + 1e-12:
            best[i2][j2] = value
            back[i2][j2] = how

    for i in range(n + 1):
        row = best[i]
        for j in range(m + 1):
            here = row[j]
            if here < 0:
                continue
            if i < n:
                push(i + 1, j, here, ("skip_c", i, j))
            if j < m:
                push(i, j + 1, here, ("skip_r", i, j))
            if i < n and j < m:
                c, r = cand[i], ref[j]
                weight = _pair_weight(c, r)
                fit = layout(c.used_shape, r.used_shape) if weight else None
                if fit is not None:
                    # a parameter against a buffer: a frozen norm keeps its weight and bias as buffers
                    # (detectron2's FrozenBatchNorm2d); one of a kind is preferred where both fit
                    steps = simplify_steps([*r.to_used, *fit[0], *c.from_used()], r.shape)
                    kinds = 0.0 if c.kind == r.kind else _OTHER_KIND
                    push(i + 1, j + 1, here + weight * (1.0 - fit[1] + _bonus(c, r) - kinds), ("one", i, j, steps))
            for end, units in comp_r.get(j, ()):  # one candidate tensor per reference composite
                required = sum(not unit.zeros for unit in units)  # a bias with zeros may stay unpaired
                gain, steps_all = 0.0, []
                for k, unit in enumerate(units[:n - i]):
                    c = cand[i + k]
                    r0 = ref[unit.members[0]]
                    weight = _pair_weight(c, r0)
                    fit = layout(c.used_shape, unit.shape) if c.kind == r0.kind and weight else None
                    if fit is None:
                        break
                    steps_all.append([*_joined_steps([ref[x].shape[0] for x in unit.members], unit.zeros, 0),
                                      *simplify_steps([*fit[0], *c.from_used()], unit.shape)])
                    gain += weight * len(unit.members) * (1.0 - fit[1] + _bonus(c, r0))
                    if k + 1 >= required:
                        push(i + k + 1, end, here + gain, ("concat", i, j, units[:k + 1], list(steps_all)))
            for end, units in comp_c.get(i, ()):  # several candidate tensors from one reference tensor
                required = sum(not unit.zeros for unit in units)
                gain, steps_all = 0.0, []
                for k, unit in enumerate(units[:m - j]):
                    r = ref[j + k]
                    c0 = cand[unit.members[0]]
                    weight = _pair_weight(c0, r)
                    fit = layout(unit.shape, r.used_shape) if c0.kind == r.kind and weight else None
                    if fit is None:
                        break
                    steps_all.append([*r.to_used, *fit[0]])
                    gain += weight * len(unit.members) * (1.0 - fit[1] + _bonus(c0, r))
                    if k + 1 >= required:
                        push(end, j + k + 1, here + gain, ("slice", i, j, units[:k + 1], list(steps_all)))
    out: list[tuple[list[int], list[int], list[Step], str]] = []
    i, j = n, m
    while i > 0 or j > 0:
        how = back[i][j]
        kind = how[0]
        if kind == "one":
            out.append(([how[1]], [how[2]], how[3], "one"))
        elif kind == "concat":
            _, i0, j0, units, steps_all = how
            for k, unit in enumerate(units):
                out.append(([i0 + k], list(unit.members), steps_all[k], "concat"))
        elif kind == "slice":
            _, i0, j0, units, steps_all = how
            for k, unit in enumerate(units):
                start = 0
                for member in unit.members:
                    start = _past_zeros(start, unit.zeros)
                    size = cand[member].used_shape[0]
                    cut = {"op": "slice", "dim": 0, "start": start, "stop": start + size}
                    if unit.zeros:  # read backward, the rows no sibling holds are the zeros of one without bias
                        cut["rest"] = 0.0
                    # the fused tensor in the layout the candidate's operations read, cut; then the
                    # member's stored layout
                    steps = simplify_steps([*steps_all[k], cut, *cand[member].from_used()], ref[j0 + k].shape)
                    out.append(([member], [j0 + k], steps, "slice"))
                    start += size
        i, j = how[1], how[2]
    return out[::-1]

# -- building the map -------------------------------------------------------------------------------
def _runner(call: Any, call_fn: Callable | None, side: str) -> Callable[[nn.Module], Any]:
    from harness.guards import run_forward
    from harness.pairs import as_call

    c = as_call(call)

    def run(model: nn.Module) -> Any:
        return run_forward(side, model, c.clone(), call_fn)

    return run


def infer_map(
    candidate: nn.Module,
    reference: nn.Module,
    inputs: Any,
    *,
    candidate_call: Callable | None = None,
    reference_call: Callable | None = None,
) -> WeightMap:
    """The inferred map, without verification (steps 1-4 of the module docstring)."""
    return _inferred(candidate, reference, inputs, candidate_call, reference_call)[0]


def _inferred(candidate: nn.Module, reference: nn.Module, inputs: Any, candidate_call: Callable | None,
              reference_call: Callable | None) -> tuple[WeightMap, list[tuple[str, ...]]]:
    """The inferred map, and the candidate's tensors first used together by one join (their keys in
    operand order), which verification may take in another order."""
    run_c, run_r = _runner(inputs, candidate_call, "candidate"), _runner(inputs, reference_call, "reference")
    cand, cand_computed = _first_uses(candidate, run_c)
    ref, ref_computed = _first_uses(reference, run_r)
    cand, ref, pairs = _aligned(cand, ref)
    ref, pairs = _in_unit_order(cand, ref, pairs)
    used_c: set[int] = set()
    used_r: set[int] = set()
    reasons: dict[str, str] = {}
    idle: dict[str, str] = {}  # reference keys a tensor the candidate reads again stands in for -> why
    entries = _paired(cand, ref, pairs, used_c, used_r, idle)
    entries += _repair(cand, ref, entries, used_c, used_r, reasons)
    # a tensor joined from parts that found no counterpart whole: its parts may each have one
    if _split_leftovers(cand, used_c, reasons) + _split_leftovers(ref, used_r, reasons):
        entries += _repair(cand, ref, entries, used_c, used_r, reasons)
    # a tensor read only in parts that found no counterpart whole (kernels stacked (n, out, in, kh, kw)
    # and read kernels[i]): its parts may each have one
    parts = _parts_of(candidate, run_c, cand, used_c), _parts_of(reference, run_r, ref, used_r)
    if any(parts):
        cand, ref = cand + parts[0], ref + parts[1]
        entries += _repair(cand, ref, entries, used_c, used_r, reasons)
    entries += _split_tables(cand, ref, used_c, used_r)
    uncarried: list[str] = []  # rows of reference tables the candidate adds to no token
    entries += _padded_tables(cand, ref, used_c, used_r, uncarried)
    entries += _gathered_tables(cand, ref, used_c, used_r)
    entries = _follow_flow(_cohere(_untangle(_in_operand_order(entries, cand, ref))), cand, ref)
    entries = _folded_norms(_whole_of_parts(entries, cand, ref, used_c, used_r, reasons), cand, ref, used_r, reference)
    order: dict[str, int] = {}
    for k, t in enumerate(cand):  # the parts of a joined tensor split for a second search: in its place
        for key in _stored_keys(t):
            order.setdefault(key, k)
    entries.sort(key=lambda e: order[e.candidate])
    entries += _companions(entries, candidate, reference, cand_computed, ref_computed)
    unmatched = _unmatched(cand, ref, used_c, used_r, reasons)
    fed = {k for e in entries for k in e.reference}
    for key, why in idle.items():
        if key not in fed:
            reasons[f"reference:{key}" if key in unmatched["candidate"] else key] = why
            unmatched["reference"].append(key)
    _computed_alike(unmatched, {"candidate": candidate, "reference": reference}, cand_computed, ref_computed)
    mapped_buffers = {e.candidate for e in entries} | {k for e in entries for k in e.reference}
    computed = {"candidate": [k for k in cand_computed if k not in mapped_buffers],
                "reference": [k for k in ref_computed if k not in mapped_buffers]}
    for k in computed["candidate"]:
        reasons[k] = cand_computed[k]
    for k in computed["reference"]:
        reasons[k] = ref_computed[k]
    numel = sum(p.numel() for p in candidate.parameters())
    notes = _shared_notes(entries, [k for k in unmatched["reference"] if k in idle]) + uncarried
    weights = WeightMap(entries=entries, unmatched=unmatched, reasons=reasons, computed=computed,
                        candidate_numel=numel, notes=notes)
    return weights, _join_groups(cand)


def _join_groups(tensors: list[_Tensor]) -> list[tuple[str, ...]]:
    """The keys of tensors first used together by one join (``torch.stack(list(kernels))``), in operand order."""
    groups: dict[int, list[str]] = {}
    for t in tensors:
        if t.op in _JOINING and not t.again and not t.pieces and t.part is None:
            groups.setdefault(t.op_index, []).append(t.key)
    return [tuple(keys) for keys in groups.values() if len(keys) >= 2]


def _aligned(cand: list[_Tensor], ref: list[_Tensor]) -> tuple[list[_Tensor], list[_Tensor], list]:
    """The two sequences and their alignment: of first uses alone, and only where that leaves a
    tensor used by either forward without a counterpart, with the later reads too. Later reads
    lengthen the sequences by every repeated application (a block run in a loop), and where first
    uses pair whole they have nothing to add."""
    firsts = [t for t in cand if not t.again], [t for t in ref if not t.again]
    pairs = _align(*firsts)
    if len(firsts[0]) == len(cand) and len(firsts[1]) == len(ref):
        return cand, ref, pairs
    paired = {k for ci, _, _, _ in pairs for k in ci}, {k for _, ri, _, _ in pairs for k in ri}
    if all(k in taken or t.op == "<unused>" for side, taken in zip(firsts, paired) for k, t in enumerate(side)):
        return *firsts, pairs
    return cand, ref, _align(cand, ref)


def _in_unit_order(cand: list[_Tensor], ref: list[_Tensor], pairs: list) -> tuple[list[_Tensor], list]:
    """Where the in-order alignment leaves tensors both forwards use without a counterpart on both
    sides, the two may call whole modules in another order (torchvision's FPN runs each lateral conv
    and then its smoothing conv, level by level; a port runs every lateral first): the reference's
    units (runs of tensors of one module) are put in the order of the candidate's units of the same
    signature (the kinds and shapes of their tensors; the k-th of one signature with the k-th), each
    unit without a twin kept right after the unit it followed, and the alignment is run again. The
    new order is kept only where it pairs more tensors: same-shaped tensors alone never reorder."""
    if not _unpaired_used(cand, pairs, 0) or not _unpaired_used(ref, pairs, 1):
        return ref, pairs
    order = _unit_order(_units(cand, stored=False), _units(ref, stored=True))
    if order is None:
        return ref, pairs
    moved = [ref[k] for k in order]
    again = _align(cand, moved)
    if len(_unpaired_used(cand, again, 0)) + len(_unpaired_used(moved, again, 1)) \
            >= len(_unpaired_used(cand, pairs, 0)) + len(_unpaired_used(ref, pairs, 1)):
        return ref, pairs
    return moved, again


def _unpaired_used(tensors: list[_Tensor], pairs: list, side: int) -> set[int]:
    """Indices of tensors the forward uses that no pair holds (``side``: 0 candidate, 1 reference)."""
    paired = {k for pair in pairs for k in pair[side]}
    return {k for k, t in enumerate(tensors) if k not in paired and t.op != "<unused>"}


def _units(tensors: list[_Tensor], *, stored: bool) -> list[tuple[tuple, list[int]]]:
    """Runs of consecutive tensors of one module, each with its signature: its tensors' kinds and
    shapes without unit dims (a 1x1 convolution against a linear layer). Layers reading consecutive
    parts of one input (a convolution per group) are one unit, of their composite's signature: the
    twin of the one layer the other side reads the whole with."""
    label: dict[int, Any] = {}
    shapes: dict[int, tuple] = {}
    for start, runs in _composites(tensors, stored=stored).items():
        if tensors[start].source_part is None:
            continue
        end, parts = max(runs, key=lambda run: run[0])
        label.update({k: ("parts", start) for k in range(start, end)})
        shapes[start] = tuple((tensors[u.members[0]].kind, u.shape) for u in parts)
    runs: list[tuple[Any, list[int]]] = []
    for k, t in enumerate(tensors):
        owner = label.get(k, owner_of(_stored_keys(t)[0]))
        if runs and runs[-1][0] == owner:
            runs[-1][1].append(k)
        else:
            runs.append((owner, [k]))
    out = []
    for owner, members in runs:
        held = shapes[owner[1]] if isinstance(owner, tuple) else [(tensors[k].kind, tensors[k].used_shape) for k in members]
        out.append((tuple((kind, tuple(d for d in shape if d != 1)) for kind, shape in held), members))
    return out


def _unit_order(cand_units: list[tuple[tuple, list[int]]],
                ref_units: list[tuple[tuple, list[int]]]) -> list[int] | None:
    """The reference's tensor indices with its units in the order of their candidate twins; None
    where that changes nothing. Only a signature both sides hold as many units of has twins: where
    one side splits what the other fuses (``q``, ``k``, ``v`` in every block against ``qk`` and
    ``v``), the k-th of one signature is no twin of the k-th, and would pair blocks crosswise."""
    waiting: dict[tuple, list[int]] = {}  # signature -> the candidate units of it, in order
    for u, (sig, _) in enumerate(cand_units):
        waiting.setdefault(sig, []).append(u)
    held = Counter(sig for sig, _ in ref_units)
    waiting = {sig: units for sig, units in waiting.items() if len(units) == held[sig]}
    place: list[float] = []
    for sig, _ in ref_units:
        queue = waiting.get(sig)
        # a unit without a twin, or past the candidate's count, stays right after the unit it followed
        place.append(queue.pop(0) if queue else (place[-1] if place else -1) + 1e-6)
    ranked = sorted(range(len(ref_units)), key=lambda u: place[u])
    if ranked == list(range(len(ref_units))):
        return None
    return [k for u in ranked for k in ref_units[u][1]]


def _paired(cand: list[_Tensor], ref: list[_Tensor], pairs: list, used_c: set[int], used_r: set[int],
            idle: dict[str, str]) -> list[Entry]:
    """Entries for the aligned pairs (their indices noted as used). A pair where the reference
    reads a tensor again gives the candidate tensor that tensor too (a head tied to the embedding
    against a port keeping two). A pair where the candidate reads a tensor again whose source is
    known already gives nothing: the reference tensors there feed nothing in the candidate, said in
    ``idle`` (a block applied twice against two blocks). Every later read is then set aside, and
    every first use of a tensor the pairs gave a counterpart, so that no later search pairs a
    tensor twice without that evidence."""
    entries: list[Entry] = []
    sources: dict[str, tuple[str, ...]] = {}  # candidate key -> the reference keys it takes
    for ci, ri, steps, how in pairs:
        c = cand[ci[0]]
        joined = _joined_entries(c, ref[ri[0]], steps) if how == "one" and ref[ri[0]].pieces else None
        if joined is not None and c.key not in sources:
            entries += joined
            sources[c.key] = (ref[ri[0]].key,)
            used_c.update(ci)
            used_r.update(ri)
            continue
        parts = _parts_of_composite(c, [ref[r] for r in ri], steps) if c.pieces and how == "concat" else None
        if parts is not None and c.key not in sources:
            entries += parts
            sources[c.key] = tuple(e.reference[0] for e in parts)
            used_c.update(ci)
            used_r.update(r for r in ri if ref[r].key in sources[c.key])
            continue
        if any(ref[r].pieces for r in ri) or c.pieces and how != "one":
            continue  # a composite is not cut apart: left to the searches after
        keys = tuple(ref[r].key for r in ri)
        if c.key in sources:  # read again by the candidate, its source known
            if sources[c.key] != keys:
                idle.update({ref[r].key: _idle_reason(c.key, sources[c.key]) for r in ri
                             if not ref[r].again})
            continue
        entries += _pieces_of(c, ref[ri[0]], steps) if c.pieces else [Entry(
            candidate=c.key, reference=keys, steps=tuple(steps),
            shape=c.shape, reference_shapes=tuple(ref[r].shape for r in ri), kind=c.kind)]
        sources[c.key] = keys
        used_c.update(ci)
        used_r.update(ri)
    fed = {k for e in entries for k in e.reference}
    used_c.update(k for k, t in enumerate(cand) if t.again or t.key in sources)
    used_r.update(k for k, t in enumerate(ref) if t.again or t.key in fed or t.key in idle)
    return entries


def _parts_of_composite(c: _Tensor, members: list[_Tensor], steps: list[Step]) -> list[Entry] | None:
    """Entries for the parts of a candidate tensor joined where used (``torch.cat([q_bias, zeros,
    v_bias])`` as one linear layer's bias) matched to the composite of sibling layers of that same
    call (query, key and value layers, the key layer without bias): each stored part takes the
    sibling filling its rows, or a slice of it. None unless ``steps`` only join the siblings with
    zeros and every stored part lies within one sibling's rows; the searches after then pair the
    parts, by global order."""
    if c.dim != 0 or any(back for key, _, _, back in c.pieces if key is not None):
        return None
    if any(st["op"] not in ("concat", "insert") for st in steps):
        return None
    zeros = [(st["start"], st["size"]) for st in steps if st["op"] == "insert"]
    rows, start = [], 0
    for m in members:
        start = _past_zeros(start, zeros)
        rows.append((start, start + m.shape[0], m))
        start += m.shape[0]
    out = []
    for key, a, b, _ in c.pieces:
        if key is None:
            continue  # the candidate's zeros: whatever sibling fills those rows feeds nothing here
        m = next(((lo, t) for lo, hi, t in rows if lo <= a and b <= hi), None)
        if m is None:
            return None
        lo, t = m
        cut = () if (a - lo, b - lo) == (0, t.shape[0]) else ({"op": "slice", "dim": 0, "start": a - lo, "stop": b - lo},)
        out.append(Entry(key, (t.key,), cut, _part_shape(c, a, b), (t.shape,), c.kind))
    return out


def _idle_reason(candidate_key: str, sources: tuple[str, ...]) -> str:
    return (f"{STANDS_IN} {candidate_key} again, whose values come from {' + '.join(sources)} (the candidate "
            f"shares one tensor where the reference keeps one per use; the two agree only where these hold the same "
            f"values)")


def _shared_notes(entries: list[Entry], idle: list[str]) -> list[str]:
    """What a reader of the map should know about tensors read at several places: a reference
    tensor feeding several candidate tensors (a tied head), reference tensors standing for a
    candidate tensor read again (a shared block)."""
    sources = {e.candidate: " + ".join(e.reference) for e in entries}
    shared = [(sources[first], [first, *copies]) for first, copies in tied_copies(entries).items()]
    notes = []
    if shared:
        shown = "; ".join(f"{key} feeds {len(keys)} candidate tensors ({', '.join(keys)})" for key, keys in shared[:3])
        more = f"; and {len(shared) - 3} more" if len(shared) > 3 else ""
        notes.append(f"{shown}{more}: the reference reads each at several places, the candidate keeps one tensor "
                     f"per place; read backward, the first gives the reference tensor its values and the others "
                     f"must hold the same")
    if idle:
        notes.append(f"{len(idle)} reference tensor(s) feed nothing in the candidate ({', '.join(idle[:4])}"
                     f"{', ...' if len(idle) > 4 else ''}): the candidate applies its tensors again where the "
                     f"reference applies these (see their reasons)")
    return notes


def _unmatched(cand: list[_Tensor], ref: list[_Tensor], used_c: set[int], used_r: set[int],
               reasons: dict[str, str]) -> dict[str, list[str]]:
    """The keys of each side left without a counterpart, each with its reason in ``reasons``."""
    unmatched: dict[str, list[str]] = {"candidate": [], "reference": []}
    for side, tensors, used, other in (("candidate", cand, used_c, ref), ("reference", ref, used_r, cand)):
        other_shapes = {t.shape for t in other}
        for k, key, t in ((k, key, t) for k, t in enumerate(tensors) for key in _stored_keys(t)):
            if k in used or key in unmatched[side]:  # a tensor read in parts: listed once
                continue
            unmatched[side].append(key)
            # a key both models use: the reference's reason under "reference:KEY", so neither is lost
            at = f"reference:{key}" if side == "reference" and key in unmatched["candidate"] else key
            if at in reasons or f"{side}:{key}" in reasons:
                continue  # said already: a part of a tensor joined where used
            if t.op == "<unused>":
                reasons[at] = NEVER_USED
            elif t.gathered:
                reasons[at] = (f"a table the forward gathers rows of through an index and adds as "
                               f"{shape_after(t.gathered, t.shape)}: no leftover tensor of the other side holds "
                               f"that layout")
            elif t.shape not in other_shapes and not any(layout_steps(t.shape, o.shape) for o in other):
                reasons[at] = f"no tensor of a compatible shape {t.shape} on the other side (shape family differs)"
            else:
                reasons[at] = "no counterpart at this point of the computation (same-shape tensors were used elsewhere)"
    return unmatched


def _computed_alike(unmatched: dict[str, list[str]], models: dict[str, nn.Module], cand_computed: dict[str, str],
                    ref_computed: dict[str, str]) -> None:
    """Move the unmatched floating buffers that hold exactly the values of a buffer of the other
    model (kept in its checkpoint or not) to the computed ones: a table both models build from
    their settings (torchvision's persistent Swin V2 ``relative_coords_table`` against timm's
    non-persistent one) is no weight to carry, nor one to give other values when verifying."""
    for side, other, computed in (("candidate", "reference", cand_computed), ("reference", "candidate", ref_computed)):
        buffers = dict(models[side].named_buffers())
        theirs = [(k, b) for k, b in models[other].named_buffers() if b.is_floating_point()]
        for key in list(unmatched[side]):
            mine = buffers.get(key)
            # a constant (fresh running statistics: zeros, ones) says nothing about where it came from
            if mine is None or not mine.is_floating_point() or mine.numel() < 2 or bool((mine == mine.flatten()[0]).all()):
                continue
            twin = next((k for k, b in theirs if b.shape == mine.shape and b.dtype == mine.dtype and torch.equal(b, mine)),
                        None)
            if twin is not None:
                unmatched[side].remove(key)
                computed[key] = f"computed by the model: the {other}'s {twin} holds the same values"


def _stored_keys(t: _Tensor) -> list[str]:
    """The state-dict keys a first-use tensor stands for: its parts, for one joined where used; the
    tensor it is a part of, for a part."""
    if t.part is not None:
        return [t.part[0]]
    return [key for key, *_ in t.pieces if key is not None] if t.pieces else [t.key]


def _rows(start: int, stop: int, dim: int) -> str:
    return f"rows {start}:{stop}" if dim == 0 else f"{start}:{stop} along dim {dim}"


def _split_leftovers(tensors: list[_Tensor], used: set[int], reasons: dict[str, str]) -> int:
    """Append the stored parts of each unmatched tensor joined where used (marked used in its
    place), for a second search; returns how many were split."""
    said = {key.split(":", 1)[-1] for key in reasons}
    joined = [k for k, t in enumerate(tensors) if t.pieces and k not in used and not said & set(_stored_keys(t))]
    for k in joined:
        t = tensors[k]
        used.add(k)
        for key, start, stop, from_steps in t.pieces:
            if key is not None:
                cut = tuple(stop - start if d == t.dim else n for d, n in enumerate(t.shape))
                tensors.append(replace(t, key=key, shape=shape_after(from_steps, cut), to_used=(), pieces=()))
    return len(joined)


def _pieces_of(c: _Tensor, r: _Tensor, steps: list[Step]) -> list[Entry]:
    """Entries for the parts of a candidate tensor joined where used from stored tensors and zeros,
    matched to one reference tensor: each part is a slice of it. Where the candidate has zeros,
    the reference tensor's values are not carried (its forward replaces them too, or the map is
    wrong there and verification says so)."""
    out = []
    for key, start, stop, from_steps in c.pieces:
        if key is not None:
            cut = {"op": "slice", "dim": c.dim, "start": start, "stop": stop}
            part = simplify_steps([*steps, cut, *from_steps], r.shape)
            out.append(Entry(key, (r.key,), tuple(part), shape_after(part, r.shape), (r.shape,), c.kind))
    return out


def _joined_entries(c: _Tensor, r: _Tensor, steps: list[Step]) -> list[Entry] | None:
    """The entries of a candidate tensor matched to a reference tensor joined where used from
    stored tensors and zeros (``torch.cat([q_bias, zeros, v_bias])``). Against a stored fused
    tensor (a ``qkv`` bias) one entry: the stored parts concatenated, the zeros inserted where
    they sit, then ``steps`` (the whole's). Against a tensor joined alike, each part from its
    twin. None where a part is re-laid out before the join (an entry concatenates reference
    tensors as stored), or the two are joined from other parts."""
    if any(key is not None and back for key, _, _, back in (*r.pieces, *c.pieces)):
        return None
    if c.pieces:
        layout = [[(a, b, key is None) for key, a, b, _ in t.pieces] for t in (c, r)]
        if steps or c.dim != r.dim or layout[0] != layout[1]:
            return None
        return [Entry(ck, (rk,), (), _part_shape(c, a, b), (_part_shape(r, a, b),), c.kind)
                for (ck, a, b, _), (rk, *_) in zip(c.pieces, r.pieces) if ck is not None]
    parts = [(key, start, stop) for key, start, stop, _ in r.pieces if key is not None]
    zeros = [(start, stop - start) for key, start, stop, _ in r.pieces if key is None]
    joined = _joined_steps([stop - start for _, start, stop in parts], zeros, r.dim)
    return [Entry(c.key, tuple(key for key, *_ in parts), tuple([*joined, *steps]), c.shape,
                  tuple(_part_shape(r, a, b) for _, a, b in parts), c.kind)]


def _part_shape(t: _Tensor, start: int, stop: int) -> tuple[int, ...]:
    """The shape of the part ``start:stop`` along ``t.dim`` of a tensor joined where used."""
    return tuple(stop - start if d == t.dim else n for d, n in enumerate(t.shape))


def _inexpressible(c: _Tensor, other: _Tensor) -> dict[str, str]:
    """Why a candidate tensor matched to a reference tensor joined where used from stored tensors
    and zeros has no entry: an entry concatenates reference tensors as stored, so it cannot re-lay
    out a part before the join, nor cut a tensor joined from other parts into them."""
    parts = ", ".join(f"{_rows(a, b, other.dim)} {key or 'zeros'}" for key, a, b, _ in other.pieces)
    zeros = [(a, b) for key, a, b, _ in other.pieces if key is None]
    kept = " (the candidate's forward replaces the zeros' rows itself)" if other.dim == 0 and all(
        any(x <= a and b <= y for x, y in c.overwritten) for a, b in zeros) else ""
    why = (f"the reference joins its counterpart where used from {parts}{kept}, re-laying out a part first or "
           f"joining other parts than the candidate: a weight map entry concatenates reference tensors as stored "
           f"and inserts constants between them, so it cannot express this one; fill {c.key} by hand (torch.cat "
           f"of those parts with zeros)")
    out = {c.key: why}
    out.update({f"reference:{key}": f"{_rows(a, b, other.dim)} of what the reference joins where used, the "
                                    f"candidate's {c.key}, which a weight map entry cannot express (see its reason)"
                for key, a, b, _ in other.pieces if key is not None})
    return out


def _repair(cand: list[_Tensor], ref: list[_Tensor], entries: list[Entry], used_c: set[int], used_r: set[int],
            reasons: dict[str, str]) -> list[Entry]:
    """Pair tensors the in-order alignment left out because the two models use them in another
    order inside one block (a relative-position table read before the projections on one side and
    after them on the other). A leftover candidate tensor is paired with a leftover reference tensor
    of a compatible shape and kind inside the smallest reference module holding the sources of the
    candidate's neighbours (its owner's, then its owner's parent's mapped tensors)."""
    sources: dict[str, set[str]] = {}
    for e in entries:
        sources.setdefault(owner_of(e.candidate), set()).update(e.reference)
    free_r = {k: t for k, t in enumerate(ref) if k not in used_r}
    out = []
    for ci, c in enumerate(cand):
        if ci in used_c:
            continue
        owner = owner_of(_stored_keys(c)[0])
        while True:
            found = {k for name, keys in sources.items() if name == owner or name.startswith(f"{owner}.") or not owner
                     for k in keys}
            if found or not owner:
                break
            owner = owner_of(owner)
        if not found:
            continue
        region = _common_prefix(found)
        for _ in range(3):  # the module itself, then up to two enclosing ones (a q_bias beside qkv)
            fits = [(k, t) for k, t in free_r.items()
                    if t.kind == c.kind and _stored_keys(t)[0].startswith(region)
                    and layout_steps(c.shape, t.shape) is not None]
            if fits or not region:
                break
            region = region[:-1].rsplit(".", 1)[0] + "." if "." in region[:-1] else ""
        if not fits:
            continue
        k, t = max(fits, key=lambda kt: (layout_steps(c.shape, kt[1].shape)[1] * -1, _bonus(c, kt[1])))
        steps = layout_steps(c.shape, t.shape)[0]
        del free_r[k]
        joined = _joined_entries(c, t, steps) if t.pieces else None
        if t.pieces and joined is None:  # no entry can hold these parts: both stay unmatched, said why
            reasons.update(_inexpressible(c, t))
            continue
        out += joined if joined is not None else _pieces_of(c, t, steps) if c.pieces else [
            Entry(c.key, (t.key,), tuple(steps), c.shape, (t.shape,), c.kind)]
        used_c.add(ci)
        used_r.add(k)
    return out


_JOINING = {"stack", *_JOINS}  # operations joining the tensors they read: their operands have an order


def _in_operand_order(entries: list[Entry], cand: list[_Tensor], ref: list[_Tensor]) -> list[Entry]:
    """Tensors first used together by one join (``torch.stack(list(kernels))``, a grouped convolution's
    kernels) have no order of use among them but their operand positions: where the searches gave
    them same-shaped tensors of the other side, the k-th operand takes the k-th of those in that
    side's order of use. Not where each already takes a tensor of its own name (names settled it)."""
    entries = list(entries)
    order = [{t.key: k for k, t in enumerate(tensors) if not t.again} for tensors in (cand, ref)]
    for side, tensors in ((0, cand), (1, ref)):
        for keys in _join_groups(tensors):
            at = _naming(entries)  # afresh: a group before may have moved sources this one holds
            members = [at[side].get(key, []) for key in keys]
            if any(len(m) != 1 for m in members) or len({m[0] for m in members}) != len(members):
                continue
            chosen = [entries[m[0]] for m in members]
            if not _alike(chosen) or all(_leaf(e.candidate) == _leaf(e.reference[0]) for e in chosen):
                continue
            # the other side's tensors these take, in that side's order of use, and where each sits now
            partners = sorted(chosen, key=lambda e: order[1 - side].get(e.reference[0] if side == 0 else e.candidate,
                                                                       len(order[1 - side])))
            if side == 0:  # the candidate's k-th operand takes the k-th reference tensor
                for m, source in zip(members, partners):
                    entries[m[0]] = _with_sources(entries[m[0]], source)
            else:  # the reference's k-th operand feeds the candidate tensor used k-th of them
                for e, target in zip(chosen, partners):
                    k = at[0][target.candidate][0]
                    entries[k] = _with_sources(target, e)
    return entries


def _naming(entries: list[Entry]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Per side (candidate, reference): key -> the indices of the entries naming it."""
    at: tuple[dict[str, list[int]], dict[str, list[int]]] = ({}, {})
    for k, e in enumerate(entries):
        at[0].setdefault(e.candidate, []).append(k)
        for key in e.reference:
            at[1].setdefault(key, []).append(k)
    return at


def _alike(chosen: list[Entry]) -> bool:
    """Whether entries each take one reference tensor, all of one shape from one shape: they may
    exchange their sources."""
    return all(len(e.reference) == 1 and e.shape == chosen[0].shape and e.reference_shapes == chosen[0].reference_shapes
               for e in chosen)


def _whole_of_parts(entries: list[Entry], cand: list[_Tensor], ref: list[_Tensor], used_c: set[int], used_r: set[int],
                    reasons: dict[str, str]) -> list[Entry]:
    """Entries of stored tensors in place of their parts' (a tensor read only in parts was aligned
    part by part). A reference part is its tensor's slice; consecutive parts concatenated in order
    are their span. A candidate tensor whose parts all have entries is their join (:func:`_joined`):
    kernels stacked ``(n, out, in, kh, kw)`` and read ``kernels[i]`` take ``n`` convolutions' kernels
    concatenated and reshaped; one norm's tensors read by slices take ``n`` norms' tensors
    concatenated. Parts that no entry expresses so are left unmatched, with the reason."""
    parts_c = {t.key: t.part for t in cand if t.part is not None}
    parts_r = {t.key: t.part for t in ref if t.part is not None}
    if not parts_c and not parts_r:
        return entries
    whole = _whole_shapes(cand) | _whole_shapes(ref)
    out: list[Entry] = []
    dropped: list[Entry] = []
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        if e.candidate in parts_c:
            groups.setdefault(parts_c[e.candidate][0], []).append(e)
            continue
        stored = _in_stored(e, parts_r, whole)
        if stored is None:
            dropped.append(e)
            reasons[e.candidate] = (f"its counterpart is read by the reference in parts ({', '.join(e.reference)}), "
                                    f"which no weight map entry joins so")
        else:
            out.append(stored)
    for key, group in groups.items():
        tensors = sorted((t for t in cand if t.part is not None and t.part[0] == key), key=lambda t: t.part[2])
        by_part = {e.candidate: e for e in group}
        pieces = [_in_stored(by_part[t.key], parts_r, whole) if t.key in by_part else None for t in tensors]
        joined = _joined(key, whole[key], tensors[0].part[1], pieces, tensors[0].kind) if all(pieces) else None
        if joined is None:
            dropped += group
            missing = [t.key for t, p in zip(tensors, pieces) if p is None]
            reasons[key] = "read by the candidate in parts, " + (
                f"of which {', '.join(missing[:4])} found no counterpart" if missing
                else "whose counterparts no weight map entry joins into it")
        else:
            out.append(joined)
    if dropped:
        keep = {k for e in entries if e not in dropped for k in (e.candidate, *e.reference)}
        used_c.difference_update(k for k, t in enumerate(cand) if t.key not in keep
                                 and t.key in {e.candidate for e in dropped})
        used_r.difference_update(k for k, t in enumerate(ref) if t.key not in keep
                                 and t.key in {r for e in dropped for r in e.reference})
    return out


def _whole_shapes(tensors: list[_Tensor]) -> dict[str, tuple[int, ...]]:
    """The stored shape of each tensor read in parts: its parts' shape, their span along their dim."""
    out: dict[str, tuple[int, ...]] = {}
    for t in tensors:
        if t.part is not None:
            key, dim, _, stop = t.part
            size = max(stop, out[key][dim] if key in out else 0)
            out[key] = tuple(size if d == dim else n for d, n in enumerate(t.shape))
    return out


def _in_stored(e: Entry, parts: dict[str, tuple[str, int, int, int]], whole: dict[str, tuple[int, ...]]) -> Entry | None:
    """``e`` reading its reference parts from their stored tensors: one part, its slice; several
    concatenated along their dim, consecutive and in order, their span. None for any other join."""
    if not any(key in parts for key in e.reference):
        return e
    spans = [parts.get(key) for key in e.reference]
    if len(spans) == 1:
        key, dim, start, stop = spans[0]
        steps = simplify_steps([{"op": "slice", "dim": dim, "start": start, "stop": stop}, *e.steps], whole[key])
        return replace(e, reference=(key,), steps=tuple(steps), reference_shapes=(whole[key],))
    if None in spans or len({(key, dim) for key, dim, _, _ in spans}) != 1 or not e.steps \
            or e.steps[0]["op"] != "concat" or e.steps[0]["dim"] != spans[0][1] \
            or any(a[3] != b[2] for a, b in zip(spans, spans[1:])):
        return None
    key, dim, start, stop = spans[0][0], spans[0][1], spans[0][2], spans[-1][3]
    cut = [] if (start, stop) == (0, whole[key][dim]) else [{"op": "slice", "dim": dim, "start": start, "stop": stop}]
    return replace(e, reference=(key,), steps=(*cut, *e.steps[1:]), reference_shapes=(whole[key],))


def _joined(key: str, shape: tuple[int, ...], dim: int, pieces: list[Entry], kind: str) -> Entry | None:
    """The entry of a candidate tensor of ``shape`` joined along ``dim`` from the parts ``pieces``
    gives (each from one reference tensor): that tensor as it is or re-laid out, where the parts
    take its consecutive slices; the reference tensors concatenated along ``dim`` where the parts
    are them as they are; stacked where each part is one reference tensor re-laid out alike
    (``concat`` along that dim then ``reshape``; else along the first, a ``permute`` moving it). Each
    choice is checked against the parts on numbered values; None where none fits."""
    if any(len(p.reference) != 1 for p in pieces):
        return None
    sources = [p.reference[0] for p in pieces]
    shapes = [p.reference_shapes[0] for p in pieces]
    choices: list[Entry] = []
    if len(set(sources)) == 1:
        fits = [[]] if shape == shapes[0] else []
        found = layout_steps(shape, shapes[0])
        choices += [Entry(key, (sources[0],), tuple(steps), shape, (shapes[0],), kind)
                    for steps in [*fits, *([found[0]] if found else [])]]
    elif len(set(sources)) == len(sources):
        if all(not p.steps for p in pieces):
            choices.append(Entry(key, tuple(sources), tuple(_joined_steps([s[dim] for s in shapes], (), dim)),
                                 shape, tuple(shapes), kind))
        alike = len(set(shapes)) == 1 and all(p.steps == pieces[0].steps for p in pieces)
        if alike and dim < len(shapes[0]):  # stacked along a dim the references have: joined there, reshaped
            joined = tuple(len(shapes) * n if d == dim else n for d, n in enumerate(shapes[0]))
            choices.append(Entry(key, tuple(sources), (*_joined_steps([shapes[0][dim]] * len(shapes), (), dim),
                                                       *simplify_steps([{"op": "reshape", "shape": list(shape)}], joined)),
                                 shape, tuple(shapes), kind))
        stacked = _stacked_steps(shapes, pieces[0].steps, dim, shape) if alike else None
        if stacked is not None:
            choices.append(Entry(key, tuple(sources), tuple(stacked), shape, tuple(shapes), kind))
    return next((choice for choice in choices if _assembles(choice, pieces, dim)), None)


def _stacked_steps(shapes: list[tuple[int, ...]], steps: tuple[Step, ...], dim: int,
                   target: tuple[int, ...]) -> list[Step] | None:
    """Steps stacking ``n`` reference tensors of one shape, each re-laid out by ``steps`` into a part
    of ``target`` along ``dim``: concatenated, given a leading dim of ``n``, re-laid out past it, that
    dim moved to ``dim`` and merged with the part's. None where a step is no layout step."""
    n, shape = len(shapes), shapes[0]
    if not shape:
        return None
    lifted: list[Step] = []
    for step in steps:
        if step["op"] == "reshape":
            lifted.append({"op": "reshape", "shape": [n, *step["shape"]]})
        elif step["op"] in ("transpose", "permute"):
            lifted.append({"op": step["op"], "dims": [*([0] if step["op"] == "permute" else []),
                                                      *(d + 1 for d in step["dims"])]})
        else:
            return None
    rank = len(shape_after(steps, shape))
    order = [*range(1, dim + 1), 0, *range(dim + 1, rank + 1)]
    joined = (n * shape[0], *shape[1:])
    return [*_joined_steps([shape[0]] * n, (), 0),
            *simplify_steps([{"op": "reshape", "shape": [n, *shape]}, *lifted, {"op": "permute", "dims": order},
                             {"op": "reshape", "shape": list(target)}], joined)]


def _assembles(entry: Entry, pieces: list[Entry], dim: int) -> bool:
    """Whether ``entry`` gives, on numbered reference values, the parts ``pieces`` give joined along ``dim``."""
    shapes = {k: s for e in (entry, *pieces) for k, s in zip(e.reference, e.reference_shapes)}
    total = sum(math.prod(s) for s in shapes.values())
    dtype = torch.int32 if total < 2 ** 31 else torch.int64
    state, start = {}, 0
    for k, s in shapes.items():
        state[k] = torch.arange(start, start + math.prod(s), dtype=dtype).reshape(s)
        start += math.prod(s)
    try:
        want = torch.cat([_moved(p, state) for p in pieces], dim)
        got = _moved(entry, state)
    except (RuntimeError, ValueError, IndexError):
        return False
    return got.shape == want.shape and bool(torch.equal(got, want))


def _moved(e: Entry, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The candidate tensor ``e`` makes of the reference tensors ``state``."""
    return _forward_move(e).apply(state)[e.candidate]


_TABLE_PARTS = 3  # the most parts one table is cut into: a class row, register rows, the grid
_TABLE_CHOICES = 12  # leftover candidate tensors tried as parts of one table, at most


def _split_tables(cand: list[_Tensor], ref: list[_Tensor], used_c: set[int], used_r: set[int]) -> list[Entry]:
    """Tables one model keeps whole and the other in parts: timm's position table ``(1, 1 + N, C)``
    against a class-token row ``(1, 1, C)`` added before the join and a grid ``(1, C, h, w)`` added to
    the patch map. A leftover reference tensor cut along one dim into consecutive slices, each
    giving one leftover candidate tensor its values (as stored, reshaped, or with its channels moved
    first: tokens to a ``(C, h, w)`` map), is their source. The smaller parts come first (class and
    register rows precede the patches in every common layout), ties in the candidate's order of use;
    verification says if the order is wrong."""
    out: list[Entry] = []
    for rk, r in enumerate(ref):
        if rk in used_r or r.pieces or r.part or r.op == "<unused>" or len(r.shape) < 2:
            continue
        free = [k for k, c in enumerate(cand) if k not in used_c and c.kind == r.kind and not c.pieces and not c.part
                and not c.to_used and c.op != "<unused>"][:_TABLE_CHOICES]
        found = _table_parts(r, [(k, cand[k]) for k in free])
        if found is None:
            continue
        dim, parts = found
        start = 0
        for k, rows, layout in parts:
            steps = simplify_steps([{"op": "slice", "dim": dim, "start": start, "stop": start + rows}, *layout], r.shape)
            out.append(Entry(cand[k].key, (r.key,), tuple(steps), cand[k].shape, (r.shape,), r.kind))
            used_c.add(k)
            start += rows
        used_r.add(rk)
    return out


_PREFIX_ROWS = 8  # the most rows a table keeps for tokens before the patches (class, registers)
_TABLE_OPS = ("add", "add_")  # a position table is added to the tokens; a weight read by a layer is no table


def _padded_tables(cand: list[_Tensor], ref: list[_Tensor], used_c: set[int], used_r: set[int],
                   notes: list[str]) -> list[Entry]:
    """A table with a few more rows than a leftover table of the other side, otherwise of its shape:
    a position table ``(1, 1 + N, C)`` kept whole for the class token and the patches against timm's
    ``no_embed_class`` table ``(1, N, C)``, added to the patches alone before the class token joins
    them. Where the candidate adds the whole longer table, the reference adds nothing to the class
    token, so those rows are zeros; verification says whether that is right. Where the forward
    holding the longer table takes only the other's rows of it (transformers' VitDet keeps a class
    row it never reads and adds ``table[:, 1:]``), the rows it leaves are marked ``unread``: inserted
    as zeros into the candidate's table, or removed from the reference's, and read backward dropped,
    or given back as zeros, whatever they hold. Where both add their whole table, the shorter one
    (timm's ``no_embed_class`` table against transformers' DINOv2 adding a class row too) takes the
    longer one's last rows, the patches' (``notes``: the leading rows, which the candidate adds to
    no token: the two agree only where those are zeros); read backward those rows are zeros, what
    the candidate adds there."""
    out: list[Entry] = []
    for rk, r in enumerate(ref):
        if rk in used_r or r.pieces or r.part or not _table(r) or len(r.shape) < 2:
            continue
        for k, c in enumerate(cand):
            if k in used_c or c.kind != r.kind or c.pieces or c.part or c.to_used or len(c.shape) != len(r.shape) \
                    or not _table(c):
                continue
            steps = _padding(c, r) if r.op in _TABLE_OPS else _trimming(c, r) if c.op in _TABLE_OPS else None
            if steps is None and r.op in _TABLE_OPS and c.op in _TABLE_OPS:
                steps = _patch_rows(c, r)
                if steps is not None:
                    cut = steps[0]
                    notes.append(f"{c.key} takes {_rows(cut['start'], cut['stop'], cut['dim'])} of {r.key}; the "
                                 f"reference adds its {_rows(0, cut['start'], cut['dim'])} to tokens the candidate "
                                 f"adds nothing to (the two agree only where those rows are zeros)")
            if steps is None:
                continue
            out.append(Entry(c.key, (r.key,), steps, c.shape, (r.shape,), r.kind))
            used_c.add(k)
            used_r.add(rk)
            break
    return out


def _table(t: _Tensor) -> bool:
    """Whether ``t`` is used as a position table: added where first used, or one range of its rows taken."""
    return t.op in _TABLE_OPS or t.kept is not None


def _longer_dim(longer: tuple[int, ...], shorter: tuple[int, ...]) -> int | None:
    """The one dim along which ``longer`` has a few more rows than ``shorter``, the others alike."""
    dims = [d for d, (a, b) in enumerate(zip(longer, shorter)) if a != b]
    return dims[0] if len(dims) == 1 and 0 < longer[dims[0]] - shorter[dims[0]] <= _PREFIX_ROWS else None


def _padding(c: _Tensor, r: _Tensor) -> tuple[Step, ...] | None:
    """The inserts of constant rows turning table ``r`` into the longer table ``c``, or None: the
    rows ``c``'s forward takes where it takes a range (the others ``unread``), else leading rows."""
    dim = _longer_dim(c.shape, r.shape)
    if dim is None:
        return None
    if c.op in _TABLE_OPS:
        return ({"op": "insert", "dim": dim, "start": 0, "size": c.shape[dim] - r.shape[dim], "value": 0.0},)
    kept_dim, start, stop = c.kept
    if kept_dim != dim or stop - start != r.shape[dim]:
        return None
    gaps = ((0, start), (stop, c.shape[dim] - stop))
    return tuple({"op": "insert", "dim": dim, "start": at, "size": size, "value": 0.0, "unread": True}
                 for at, size in gaps if size)


def _patch_rows(c: _Tensor, r: _Tensor) -> tuple[Step, ...] | None:
    """The cut of the longer table ``r`` to its last rows, as many as table ``c`` has, or None; the
    rows before them are zeros where read backward."""
    dim = _longer_dim(r.shape, c.shape)
    if dim is None:
        return None
    return ({"op": "slice", "dim": dim, "start": r.shape[dim] - c.shape[dim], "stop": r.shape[dim], "rest": 0.0},)


def _trimming(c: _Tensor, r: _Tensor) -> tuple[Step, ...] | None:
    """The removals of the rows the reference's forward never reads turning its longer table ``r``
    (one range of it taken where used) into ``c``, or None."""
    dim = _longer_dim(r.shape, c.shape)
    if dim is None or r.kept is None or r.kept[0] != dim or r.kept[2] - r.kept[1] != c.shape[dim]:
        return None
    _, start, stop = r.kept
    gaps = ((stop, r.shape[dim]), (0, start))  # the later rows first: the earlier keep their place
    return tuple({"op": "remove", "dim": dim, "start": a, "stop": b, "unread": True} for a, b in gaps if b > a)


def _gathered_tables(cand: list[_Tensor], ref: list[_Tensor], used_c: set[int], used_r: set[int]) -> list[Entry]:
    """A leftover table one model gathers rows of through an index (timm's Swin builds its
    relative-position bias ``(heads, N, N)`` as ``table[relative_position_index]``) against a
    leftover tensor of the other holding the gathered layout (a port keeping that bias whole): the
    table's gather steps map it onto that tensor; the other way round, each row of the table comes
    from the first place that took it. In order of use; verification says whether it is right."""
    out: list[Entry] = []
    for rk, r in enumerate(ref):
        if rk in used_r or not r.gathered:
            continue
        gathered = shape_after(r.gathered, r.shape)
        k = _first_fit(cand, used_c, r.kind, lambda c: layout_steps(c.shape, gathered))
        if k is not None:
            steps = simplify_steps([*r.gathered, *layout_steps(cand[k].shape, gathered)[0]], r.shape)
            out.append(Entry(cand[k].key, (r.key,), tuple(steps), cand[k].shape, (r.shape,), cand[k].kind))
            used_c.add(k)
            used_r.add(rk)
    for k, c in enumerate(cand):
        back = _ungathered(c)
        if k in used_c or back is None:
            continue
        gathered = shape_after(c.gathered, c.shape)
        rk = _first_fit(ref, used_r, c.kind, lambda r: layout_steps(gathered, r.shape))
        if rk is not None:
            steps = simplify_steps([*layout_steps(gathered, ref[rk].shape)[0], *back], ref[rk].shape)
            out.append(Entry(c.key, (ref[rk].key,), tuple(steps), c.shape, (ref[rk].shape,), c.kind))
            used_c.add(k)
            used_r.add(rk)
    return out


def _ungathered(t: _Tensor) -> list[Step] | None:
    """Steps from the gathered layout back to ``t``'s table; None without a gather, or where some
    row of the table is never gathered (nothing there to read it back from)."""
    if not t.gathered:
        return None
    try:
        return invert_steps(t.gathered, t.shape)
    except ValueError:
        return None


def _first_fit(tensors: list[_Tensor], used: set[int], kind: str, fits: Callable[[_Tensor], Any]) -> int | None:
    """The first unused tensor of ``kind`` (not joined from parts) that ``fits``."""
    return next((k for k, t in enumerate(tensors) if k not in used and t.kind == kind and not t.pieces and not t.part
                 and t.op != "<unused>" and fits(t) is not None), None)


def _table_parts(r: _Tensor, free: list[tuple[int, _Tensor]]) -> tuple[int, list[tuple[int, int, list[Step]]]] | None:
    """(dim, [(candidate index, rows, layout steps of its slice)] in slice order) for the first dim of
    ``r`` that consecutive slices of cover exactly with candidate tensors of ``free``; or None."""
    for dim, size in enumerate(r.shape):
        across = math.prod(r.shape) // size if size else 0
        fits = []
        for k, c in free:
            numel = math.prod(c.shape)
            rows = numel // across if across and numel % across == 0 else 0
            piece = tuple(rows if d == dim else n for d, n in enumerate(r.shape))
            layout = _table_layout(c.shape, piece) if 0 < rows < size else None
            if layout is not None:
                fits.append((k, rows, layout, c.op_index))
        for count in range(2, _TABLE_PARTS + 1):
            chosen = next((group for group in combinations(fits, count) if sum(f[1] for f in group) == size), None)
            if chosen is not None:
                return dim, [(k, rows, layout) for k, rows, layout, _ in sorted(chosen, key=lambda f: (f[1], f[3]))]
    return None


def _table_layout(target: tuple[int, ...], piece: tuple[int, ...]) -> list[Step] | None:
    """Steps from a slice of a table to a tensor holding its values: the same rows reshaped
    (``(1, N, C)`` as ``(1, h, w, C)`` or ``(N, C)``), or with the channels (last) moved before the
    rows (``(1, N, C)`` as a ``(1, C, h, w)`` map). None if neither fits."""
    if math.prod(target) != math.prod(piece):
        return None
    if target == piece:
        return []
    if target[-1] == piece[-1] or [d for d in target if d != 1] == [d for d in piece if d != 1]:
        return [{"op": "reshape", "shape": list(target)}]
    lead = next((a for a, d in enumerate(target) if d != 1), None)
    if len(piece) >= 2 and lead is not None and target[lead] == piece[-1] != piece[-2]:
        return [{"op": "transpose", "dims": [len(piece) - 2, len(piece) - 1]}, {"op": "reshape", "shape": list(target)}]
    return None


def _swap_sources(a: Entry, b: Entry) -> tuple[Entry, Entry]:
    return _with_sources(a, b), _with_sources(b, a)


def _with_sources(a: Entry, b: Entry) -> Entry:
    """Candidate entry ``a`` taking ``b``'s reference tensors, as ``b`` takes them."""
    return replace(a, reference=b.reference, steps=b.steps, reference_shapes=b.reference_shapes)


def _untangle(entries: list[Entry]) -> list[Entry]:
    """Within one module, the order of use says nothing between same-shaped tensors read by one
    expression (timm's GRN reads ``bias`` before ``weight`` in ``addcmul(bias, weight, x)``,
    transformers' ``weight`` first): there, and only there, the tensors' own names decide."""
    entries = list(entries)
    groups: dict[tuple, list[int]] = {}
    for k, e in enumerate(entries):
        if len(e.reference) == 1:
            groups.setdefault((owner_of(e.candidate), owner_of(e.reference[0]), e.shape), []).append(k)

    for members in groups.values():
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                a, b = entries[members[x]], entries[members[y]]
                now = (_leaf(a.candidate) == _leaf(a.reference[0])) + (_leaf(b.candidate) == _leaf(b.reference[0]))
                swapped = (_leaf(a.candidate) == _leaf(b.reference[0])) + (_leaf(b.candidate) == _leaf(a.reference[0]))
                if swapped > now and a.reference_shapes == b.reference_shapes:
                    entries[members[x]], entries[members[y]] = _swap_sources(a, b)
    return entries


def _leaf(key: str) -> str:
    """A tensor's own name (``weight``, ``running_mean``), without its module's (nor a part's rows)."""
    return key.rsplit(".", 1)[-1].split("[", 1)[0]


def _unit(key: str) -> str:
    """The module a tensor's module sits in: a conv and the norm after it (``proj.0.weight``,
    ``proj.1.weight``) form the unit ``proj`` that the other side also builds as one."""
    return owner_of(owner_of(key))


def _cohere(entries: list[Entry]) -> list[Entry]:
    """Keep units whole. Where the in-order alignment could not follow a block that runs its
    shortcut before the main branch on one side and after it on the other, leftovers were paired
    by shape alone and a unit may take its conv from one reference unit and its norm from another.
    A unit's source is the reference unit most of its elements come from; two same-shaped tensors
    of one role (equal leaf names on both sides) that both sit in the wrong source exchange their
    sources when that puts one of them in its unit's source: a pair of misplaced norms is fixed by
    one exchange, a cycle of three by two. Whole units, once consistent, are ordered by the
    verification (exchanges of same-shaped submodules)."""
    entries = list(entries)
    single = [k for k, e in enumerate(entries) if len(e.reference) == 1]
    for _ in range(len(single)):  # each exchange puts one more entry in its source for good: bounded
        source = _unit_sources([entries[k] for k in single])
        misfits = [k for k in single if _unit(entries[k].reference[0]) != source[_unit(entries[k].candidate)]]
        pair = next(((a, b) for a in misfits for b in misfits
                     if a != b and _exchange_fits(entries[a], entries[b], source)), None)
        if pair is None:
            break
        a, b = pair
        entries[a], entries[b] = _swap_sources(entries[a], entries[b])
    return entries


def _unit_sources(entries: list[Entry]) -> dict[str, str]:
    """Each candidate unit's reference unit: the one most of its mapped elements come from."""
    weight: dict[str, dict[str, int]] = {}
    for e in entries:
        votes = weight.setdefault(_unit(e.candidate), {})
        votes[_unit(e.reference[0])] = votes.get(_unit(e.reference[0]), 0) + math.prod(e.shape)
    return {unit: max(votes, key=votes.get) for unit, votes in weight.items()}


def _exchange_fits(a: Entry, b: Entry, source: dict[str, str]) -> bool:
    return (a.kind == b.kind and a.shape == b.shape and a.reference_shapes == b.reference_shapes
            and _leaf(a.candidate) == _leaf(b.candidate) and _leaf(a.reference[0]) == _leaf(b.reference[0])
            and _unit(b.reference[0]) == source[_unit(a.candidate)])


_FLOW_DEPTH = 3  # readers of readers exchanged along with a module, at most: a norm, its projection, the next norm


def _follow_flow(entries: list[Entry], cand: list[_Tensor], ref: list[_Tensor]) -> list[Entry]:
    """Same-shaped modules placed by the data they read. Order of use pairs the k-th layer norm of a
    width with the k-th; a port exchanging information between two branches one branch at a time
    (project, attend, project back; then the other branch) where its twin first projects both
    branches uses them in another order, and every norm and projection of that width takes a
    sibling's tensors. What each tensor's operation reads derives from the output of an earlier
    operation using weights (its flow): a pair agrees where that operation's tensor is mapped to the
    tensor of its twin's. Two candidate modules of one signature (the same tensors, shapes and steps,
    each fed from one reference module) exchange their sources where both then agree and more pairs
    agree in all: alone, or with the modules reading each of them, pairwise by signature (a norm and
    the projection after it); three astray pass theirs around a cycle where all three then agree;
    repeated while an exchange helps. Where two branches join, the later branch's operation is the
    flow, so a block running its shortcut first agrees after the join only in part: no exchange
    there may leave one of the two astray. A map whose pairs all agree is left as it is."""
    flow = _Flow(list(entries), cand, ref)
    score, astray = flow.agreeing()
    for _ in range(len(flow.units)):  # each kept exchange makes more pairs agree: bounded
        better = next(((pairs, trial) for a in sorted(astray) for pairs, moved in flow.moves(a, astray)
                       for trial in [flow.tried(pairs)] if trial[0] > score and not trial[1] & moved), None)
        if better is None:
            break
        pairs, (score, astray) = better
        flow.exchange(pairs)
    return flow.entries


class _Flow:
    """Entries grouped into candidate units (a module's tensors), with what each tensor's first use
    reads on both sides (see :func:`_follow_flow`)."""

    def __init__(self, entries: list[Entry], cand: list[_Tensor], ref: list[_Tensor]) -> None:
        self.entries = entries
        self.flows = _flows(cand), _flows(ref)
        self.tensors = {t.key: t for t in cand if not t.again}, {t.key: t for t in ref if not t.again}
        self.units: dict[str, list[int]] = {}
        for k, e in enumerate(entries):
            self.units.setdefault(owner_of(e.candidate), []).append(k)
        self.signatures = {unit: _flow_signature(entries, members) for unit, members in self.units.items()}
        self.readers: dict[str, list[str]] = {}  # unit -> the units whose operations read what it computed
        for unit, members in self.units.items():
            c = self.tensors[0].get(entries[members[0]].candidate)
            fed_by = self.flows[0].get(c.after) if c is not None else None
            if fed_by not in (None, "<input>"):
                self.readers.setdefault(owner_of(fed_by), []).append(unit)

    def agreeing(self) -> tuple[int, set[str]]:
        """How many entries agree, and the units holding one that does not."""
        sources = {e.candidate: e.reference for e in self.entries}
        sources["<input>"] = ("<input>",)  # an operation on the inputs alone agrees with one on them
        count, astray = 0, set()
        for unit, members in self.units.items():
            for e in (self.entries[k] for k in members if len(self.entries[k].reference) == 1):
                c, r = self.tensors[0].get(e.candidate), self.tensors[1].get(e.reference[0])
                fc = self.flows[0].get(c.after) if c is not None else None
                fr = self.flows[1].get(r.after) if r is not None else None
                if fc not in sources or fr is None:
                    continue  # the flow says nothing: a tensor joined from parts, or fed by an unmapped one
                if fr in sources[fc]:
                    count += 1
                else:
                    astray.add(unit)
        return count, astray

    def tried(self, pairs: list[tuple[str, str]]) -> tuple[int, set[str]]:
        """:meth:`agreeing` after the exchanges ``pairs``, which are then undone."""
        self.exchange(pairs)
        trial = self.agreeing()
        self.exchange(pairs[::-1])
        return trial

    def exchange(self, pairs: list[tuple[str, str]]) -> None:
        for x, y in pairs:
            _exchange_units(self.entries, self.units[x], self.units[y])

    def moves(self, a: str, astray: set[str]) -> Iterable[tuple[list[tuple[str, str]], set[str]]]:
        """Exchanges putting ``a`` elsewhere, each with the units that must agree after it: with one
        unit of its signature (and their readers), or around a cycle of three units astray."""
        if self.signatures[a] is None:
            return
        alike = [b for b in self.units if b != a and self.signatures[b] == self.signatures[a]]
        for b in alike:
            for depth in range(_FLOW_DEPTH + 1):
                yield self.chain(a, b, depth), {a, b}
        for b, c in permutations([u for u in alike if u in astray], 2):
            yield [(a, b), (b, c)], {a, b, c}  # a takes b's sources, b c's, c a's

    def chain(self, a: str, b: str, depth: int) -> list[tuple[str, str]]:
        """``a`` and ``b`` with their readers paired by signature, and theirs, ``depth`` deep."""
        pairs, free = [(a, b)], list(self.readers.get(b, ()))
        for x in self.readers.get(a, ()) if depth else ():
            y = next((y for y in free if y != x and self.signatures[x] is not None
                      and self.signatures[y] == self.signatures[x]), None)
            if y is not None:
                free.remove(y)
                pairs += self.chain(x, y, depth - 1)
        return pairs


def _flow_signature(entries: list[Entry], members: list[int]) -> tuple | None:
    """What a unit's exchange partner must hold alike: each tensor's names, shapes, steps and kind;
    None where some tensor is not fed whole from one reference module."""
    if any(len(entries[k].reference) != 1 for k in members) or \
            len({owner_of(entries[k].reference[0]) for k in members}) != 1:
        return None
    return tuple((_leaf(entries[k].candidate), _leaf(entries[k].reference[0]), entries[k].shape,
                  entries[k].reference_shapes, entries[k].steps, entries[k].kind) for k in members)


def _exchange_units(entries: list[Entry], a: list[int], b: list[int]) -> None:
    """Give the entries of unit ``a`` the sources of unit ``b``'s, member by member, and the other way round."""
    for x, y in zip(a, b):
        entries[x], entries[y] = _swap_sources(entries[x], entries[y])


def _flows(tensors: list[_Tensor]) -> dict[int, str]:
    """Operation index -> the first tensor that operation reads, ``-1`` -> ``<input>``: what an
    operation's ``after`` names, as a key."""
    reads: dict[int, str] = {-1: "<input>"}
    for t in tensors:
        if t.op != "<unused>":
            reads.setdefault(t.op_index, t.key)
    return reads


_SCALES = {"mul", "multiply", "imul", "rmul"}  # how a folded batch norm applies its scale: x * scale
_SHIFTS = {"add", "iadd", "radd"}  # and its shift: + shift


def _folded_norms(entries: list[Entry], cand: list[_Tensor], ref: list[_Tensor], used_r: set[int],
                  reference: nn.Module) -> list[Entry]:
    """A port that folds a batch norm into ``x * scale + shift`` keeps two tensors where the
    reference keeps four; the alignment pairs them with two of the four by order alone (``scale <-
    running_mean``). Where exactly two candidate tensors take tensors of one reference batch norm, one
    the forward multiplies by and one it adds, they take the folding of all of them instead (``scale =
    weight / sqrt(var + eps)``, ``shift = bias - mean * scale``: a ``fold_norm`` step), and every tensor
    of that norm counts as fed. The pair is found from the norm's side, so the module holding them may
    hold other tensors too (a fused conv-and-norm module keeping the kernel beside them, or a root
    folding in its own forward). The verification then checks the fold like any other entry."""
    ops = {t.key: t.op for t in cand}
    norms: dict[str, dict[str, int]] = {}  # reference norm module -> role -> index of its tensor
    for k, t in enumerate(ref):
        if t.op == "batch_norm" and _leaf(t.key) in NORM_ROLES and t.part is None:
            norms.setdefault(owner_of(t.key), {})[_leaf(t.key)] = k
    by_norm: dict[str, list[int]] = {}  # reference norm module -> the entries taking one of its tensors
    for k, e in enumerate(entries):
        owners = {owner_of(r) for r in e.reference}
        if len(owners) == 1 and next(iter(owners)) in norms:
            by_norm.setdefault(next(iter(owners)), []).append(k)
    out = list(entries)
    for module, ks in by_norm.items():
        found = _folded_norm(entries, ks, ops, norms[module], ref, reference.get_submodule(module))
        if found is None:
            continue
        parts, eps = found
        norm = norms[module]
        of = [role for role in NORM_ROLES if role in norm]
        size = ref[norm["running_var"]].shape
        for part, k in parts.items():
            e = entries[k]
            fold = {"op": "fold_norm", "part": part, "eps": eps, "of": of}
            reshape = [{"op": "reshape", "shape": list(e.shape)}] if tuple(e.shape) != tuple(size) else []
            out[k] = replace(e, reference=tuple(ref[norm[role]].key for role in of), steps=(fold, *reshape),
                             reference_shapes=tuple(ref[norm[role]].shape for role in of))
        used_r.update(norm.values())
    return out


def _folded_norm(entries: list[Entry], ks: list[int], ops: dict[str, str], norm: dict[str, int],
                 ref: list[_Tensor], module: nn.Module) -> tuple[dict[str, int], float] | None:
    """For the entries ``ks`` taking tensors of one reference norm (role -> tensor index): which entry
    takes the scale and which the shift, and the norm's eps; None unless they are two, one tensor
    multiplied by and one added, both of the norm's size, each taken from one tensor of the norm."""
    if len(ks) != 2 or any(len(entries[k].reference) != 1 for k in ks):
        return None
    scale = next((k for k in ks if ops.get(entries[k].candidate) in _SCALES), None)
    shift = next((k for k in ks if ops.get(entries[k].candidate) in _SHIFTS), None)
    eps = getattr(module, "eps", None)
    if "running_mean" not in norm or "running_var" not in norm or scale is None or shift is None \
            or not isinstance(eps, float):
        return None
    size = math.prod(ref[norm["running_var"]].shape)
    if any(math.prod(entries[k].shape) != size for k in ks):
        return None
    return {"scale": scale, "shift": shift}, eps


def _common_prefix(keys: Iterable[str]) -> str:
    """The deepest module (as ``name.``) containing every key; ``""`` for the root."""
    parts = [k.split(".")[:-1] for k in keys]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common) + "." if common else ""

def _companions(entries: list[Entry], candidate: nn.Module, reference: nn.Module,
                cand_computed: dict[str, str], ref_computed: dict[str, str]) -> list[Entry]:
    """Integer buffers (``num_batches_tracked``) of a module whose floating tensors all come from one
    reference module that has a buffer of the same name and shape."""
    owners: dict[str, set[str]] = {}
    for e in entries:
        owners.setdefault(owner_of(e.candidate), set()).update(owner_of(k) for k in e.reference)
    ref_state = reference.state_dict(keep_vars=True)
    cand_state = candidate.state_dict(keep_vars=True)
    out = []
    for key in cand_computed:
        sources = owners.get(owner_of(key), set())
        if len(sources) != 1:
            continue
        leaf = _leaf(key)
        twin = f"{next(iter(sources))}.{leaf}" if next(iter(sources)) else leaf
        if twin in ref_computed and tuple(ref_state[twin].shape) == tuple(cand_state[key].shape):
            shape = tuple(cand_state[key].shape)
            out.append(Entry(key, (twin,), (), shape, (shape,), "buffer"))
    return out

def map_weights(
    candidate: nn.Module,
    reference: nn.Module,
    inputs: Any,
    *,
    verify: bool = True,
    candidate_call: Callable | None = None,
    reference_call: Callable | None = None,
    candidate_outputs: Callable | None = None,
    reference_outputs: Callable | None = None,
    max_alternatives: int = 12,
) -> WeightMap:
    """Infer which reference tensor feeds which candidate tensor (see the module docstring).

    Neither model is changed: verification works on a copy of the candidate. ``inputs`` as for
    :func:`harness.compare`; ``*_call``/``*_outputs`` when the two sides are called differently.
    """
    candidate, reference = eager_module(check_module("candidate", candidate)), eager_module(check_module("reference", reference))
    from harness.guards import ModelState, check_dtypes  # guards imports the pair registry, which imports this module

    check_dtypes(candidate, reference)  # as compare does: before a forward fails on the other side's dtype

    # the first-use runs call both models as they are: a model left in training mode would update
    # its batch norms' running statistics, which are part of what is being mapped
    state = ModelState(candidate, reference)
    try:
        weights, joins = _inferred(candidate, reference, inputs, candidate_call, reference_call)
    finally:
        state.restore()
    if verify:
        _verify(weights, candidate, reference, inputs, max_alternatives,
                dict(candidate_call=candidate_call, reference_call=reference_call,
                     candidate_outputs=candidate_outputs, reference_outputs=reference_outputs), joins)
    return weights


def _verify(weights: WeightMap, candidate: nn.Module, reference: nn.Module, inputs: Any,
            budget: int, options: dict[str, Any], joins: list[tuple[str, ...]] = ()) -> None:
    """Transfer into a copy, compare through the map, try alternatives where twins disagree; an
    exchange refused around one culprit is not tried again around its namesake in a block built alike.
    ``joins``: candidate tensors first used together by one join, in operand order."""
    from harness.api import compare

    trial = copy.deepcopy(candidate)
    unfilled = _scramble_unfilled(weights, trial)
    reference = _untied(weights, reference)

    def run(w: WeightMap):
        w.transfer(reference, trial)
        # the map is right or wrong whatever the rounding: absolute tolerances, no noise floor
        # only the verdict and the disagreeing modules count here: no diagnosis
        return compare(trial, reference, inputs, weights=w, noise_floor=False, diagnose=False, **options)

    report = run(weights)
    stuck: set[str] = set()  # modules around which no alternative helps
    structural: set[tuple] = set()  # the code differences (by module relative path) that made modules stuck
    refused: set[tuple] = set()  # exchanges that left their culprit failing, as placed in blocks built alike
    while not report.passed and budget > 0:
        culprit = next((m for m in report.introduced if m not in stuck), None)
        if culprit is None:
            break
        if _settings_differ(report, culprit) or _fed_other_size(report, culprit) or _placed_unlike_any(report, culprit) \
                or _beyond_weights(report, culprit, weights) \
                or _operation_differs(report, culprit, weights, trial, structural) or _holds_any(culprit, unfilled):
            # the models differ there, or it reads a tensor the map leaves out (given other values
            # on purpose): no choice of weights can help
            stuck.add(culprit)
            continue
        for alternative, change in _culprit_first(_alternatives(weights, culprit, _first_inputs(report), joins),
                                                  weights, culprit):
            if budget <= 0:
                break
            if not isinstance(change, tuple) and _still_fails(report, culprit, alternative, weights, reference, trial):
                continue  # another layout of one tensor that leaves the culprit failing: no comparison
            alike = _exchange_alike(change, culprit)
            if alike in refused:
                continue  # refused in a block built alike: the blocks differ from their twins alike too
            budget -= 1
            trial_report = run(alternative)
            # of the orders of one set of siblings exactly one is right, and it makes the culprit agree:
            # another order may fix the one sibling it puts right and leave the culprit failing
            if not _better(trial_report, report, change) \
                    or isinstance(change, _Order) and culprit in trial_report.introduced:
                weights.transfer(reference, trial)  # back to the map the next choices differ from
                if alike is not None:
                    refused.add(alike)
            else:
                weights.entries = alternative.entries
                weights.notes.append(f"ambiguous order of use around {culprit} resolved by running both models")
                report = trial_report
                elsewhere = _same_order_elsewhere(weights, change) if isinstance(change, _Order) \
                    else _same_exchange_elsewhere(weights, change) if change else None
                if elsewhere is not None and budget > 0:
                    budget -= 1
                    trial_report = run(elsewhere)
                    if _better(trial_report, report, change):
                        weights.entries, report = elsewhere.entries, trial_report
                        weights.notes.append(f"the same exchange made in the other blocks built like "
                                             f"{_scope_of(change).rstrip('.') or ROOT}")
                    else:
                        weights.transfer(reference, trial)
                break
        else:
            stuck.add(culprit)
    weights.verified = bool(report.passed)
    if report.passed:
        weights.remember_twins(candidate, reference, {r.candidate: r.reference for r in report.rows
                                                      if r.match.how == "weights" and r.passed})
    if not report.passed and any(not _settings_differ(report, m) for m in report.introduced):
        # once, for the map as it stands: what differs at each disagreeing module, op by op (where
        # twins differ in a setting, that difference is the conflict and no diagnosis is needed)
        weights.transfer(reference, trial)
        report = compare(trial, reference, inputs, weights=weights, noise_floor=False, **options)
    weights.conflicts = [] if report.passed else [_conflict(report, m) for m in report.introduced]
    if not report.passed and unfilled:
        weights.conflicts.append({"module": None, "text": (
            f"{len(unfilled)} candidate tensor(s) the forward reads have no counterpart and were given other values "
            f"for this check, so that their own values cannot pass for a right map: {', '.join(unfilled[:6])}"
            + (" ..." if len(unfilled) > 6 else ""))})
    if not report.passed and not report.introduced:
        weights.conflicts.append({"module": None, "text": f"after transfer the outputs disagree "
                                                          f"(max_abs {report.output.max_abs:.3e})"})


def _exchange_alike(change: tuple | _Order | None, culprit: str) -> tuple | None:
    """An exchange of two modules' tensors around ``culprit`` as it reads in any block built alike
    (block numbers left out), or None for other changes: one refused where a model differs from its
    twin in every block (a padding done by hand before each depthwise conv) is refused in each."""
    if not isinstance(change, tuple) or not change or not culprit.startswith(change[0]):
        return None
    return (re.sub(r"\d+", "#", change[0]), culprit[len(change[0]):], *change[1:])


def _scope_of(change: tuple | _Order) -> str:
    return change.prefix if isinstance(change, _Order) else change[0]


def _scramble_unfilled(weights: WeightMap, trial: nn.Module) -> list[str]:
    """Give the floating tensors of ``trial`` that the forward reads but the map does not fill other
    values (seeded): a candidate that already holds the right values there (a finished conversion
    being checked) would otherwise verify a map that leaves them out. Returns their keys."""
    keys = weights.unfilled()
    tensors = dict(trial.named_parameters()) | dict(trial.named_buffers())
    generator = torch.Generator().manual_seed(0)
    scrambled = []
    with torch.no_grad():
        for key in keys:
            t = tensors.get(key)
            if t is None or not t.is_floating_point() or not t.numel():
                continue
            scale = float(t.abs().mean()) or 1.0
            t.add_(torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device) * scale)
            scrambled.append(key)
    return scrambled


def _untied(weights: WeightMap, reference: nn.Module) -> nn.Module:
    """``reference``, or where tensors the map takes hold one value alike (a fresh model's norms:
    weights all one, biases and means zero, variances one), a copy in which each of them is moved
    apart by seeded noise: a map that exchanges two of them transfers the same values either way,
    so only other values can tell its twins apart. Tensors the map leaves out keep their values
    (the candidate may compute them itself)."""
    taken = {k for e in weights.entries for k in e.reference}
    tensors = {k: t for k, t in _floating_tensors(reference).items() if k in taken}
    tied = _tied(tensors)
    if not tied:
        return reference
    untied = copy.deepcopy(reference)
    copies = _floating_tensors(untied)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key in sorted(tied):
            t = copies[key]
            noise = torch.rand(t.shape, generator=generator, dtype=torch.float64).mul_(0.5).sub_(0.25)
            if key.endswith("running_var"):  # a variance stays positive
                t.mul_(noise.exp().to(t.dtype))
            else:
                t.add_(noise.to(t.dtype) * (float(t.abs().mean()) or 1.0))
    return untied


def _floating_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: t for k, t in (*model.named_parameters(), *model.named_buffers())
            if t.is_floating_point() and t.numel()}


def _tied(tensors: Mapping[str, torch.Tensor]) -> set[str]:
    """The keys of tensors holding the same values as another of ``tensors`` (a distinct object)."""
    groups: dict[tuple, list[str]] = {}
    for key, t in tensors.items():
        flat = t.detach().reshape(-1)
        groups.setdefault((tuple(t.shape), t.dtype, float(flat.sum()), float(flat[0]), float(flat[-1])), []).append(key)
    tied: set[str] = set()
    for keys in (g for g in groups.values() if len(g) > 1):
        classes: list[list[str]] = []  # keys by value, each class compared through its first key
        for key in keys:
            t = tensors[key]
            same = next((c for c in classes if torch.equal(tensors[c[0]], t)), None)
            if same is None:
                classes.append([key])
            elif all(tensors[k].data_ptr() != t.data_ptr() for k in same):  # one tensor shared is no tie
                same.append(key)
        tied.update(k for c in classes if len(c) > 1 for k in c)
    return tied


def _holds_any(module: str, keys: list[str]) -> bool:
    """Whether candidate module ``module`` holds one of the tensors ``keys``."""
    return module == ROOT and bool(keys) or any(k.startswith(module + ".") for k in keys)


def _settings_differ(report, module: str) -> list[str]:
    """The numeric settings (eps, approximate...) on which ``module`` and its twin disagree. Not a
    stride or a padding: twins paired wrongly (a shortcut conv and the branch's first conv
    exchanged) differ in those, and an exchange of weights is what fixes them."""
    row = next((r for r in report.rows if r.candidate == module and r.status == "introduced"), None)
    return numeric_setting_differences(row) if row is not None else []


def _fed_other_size(report, module: str) -> bool:
    """``module`` receives, as its first input, another number of elements than its twin, in a
    shape no reference call receives (a map padded by a pad of the port's own, "same" padding
    against symmetric): the models differ before it, and no choice of weights changes an
    activation's size. (Twins paired wrongly, a shortcut conv and the branch's first conv, each
    receive what another reference call of the twin's kind does: an exchange fixes those. What a
    container receives counts not: the model's root receives the image a stem conv is handed
    padded by hand.)"""
    row = next((r for r in report.rows if r.candidate == module and r.status == "introduced"), None)
    if row is None:
        return False
    c, r = (_first_shape(side) for side in (row.match.candidate, row.match.reference))
    kind = type(row.match.reference.module)
    seen = {_first_shape(other.match.reference) for other in report.rows
            if row.match.reference.module is None or type(other.match.reference.module) is kind}
    return None not in (c, r) and math.prod(c) != math.prod(r) and c not in seen


_PLACEMENT = ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")


def _placed_alike(a: nn.Module, b: nn.Module) -> bool:
    return all(getattr(a, key, None) == getattr(b, key, None) for key in _PLACEMENT)


def _placed_unlike_any(report, module: str) -> bool:
    """``module``, a convolution, differs from its twin in where its kernel reads (stride, padding,
    dilation...), and no convolution of the reference with a kernel of its shape reads as it does:
    twins paired wrongly (a shortcut conv and the branch's first conv) are fixed by exchanging
    them, but here no reference conv could take its place (TF "same" padding computed in the
    forward against a symmetric padding), so no choice of weights can help."""
    row = next((r for r in report.rows if r.candidate == module and r.status == "introduced"), None)
    if row is None or row.match.how != "weights":
        return False
    cand, ref = row.match.candidate.module, row.match.reference.module
    convs = nn.modules.conv._ConvNd
    if not isinstance(cand, convs) or not isinstance(ref, convs) or _placed_alike(cand, ref):
        return False
    owners = [r.match.reference.module for r in report.rows]
    return not any(isinstance(m, convs) and m.weight.shape == cand.weight.shape and _placed_alike(m, cand)
                   for m in owners)


def _first_shape(record) -> tuple[int, ...] | None:
    first = next((v for v in record.inputs.values() if getattr(v, "shape", None) is not None), None)
    return None if first is None else tuple(first.shape)


def _beyond_weights(report, module: str, weights: WeightMap) -> bool:
    """``module`` owns no mapped tensor and received what its twin received, yet disagrees: its
    own computation differs, and no exchange of weights can change what it does with the same
    inputs. (A parameter-free module whose inputs disagree, a ReLU after a shortcut projection
    mapped to the main branch's unit, is fixed by an exchange upstream.)"""
    prefix = "" if module == ROOT else f"{module}."
    if module == ROOT or any(e.candidate.startswith(prefix) for e in weights.entries):
        return False
    row = next((r for r in report.rows if r.candidate == module and r.status == "introduced"), None)
    return row is not None and _same_inputs(row.match.candidate.inputs, row.match.reference.inputs, row.tolerance)


def _operation_differs(report, module: str, weights: WeightMap, candidate: nn.Module,
                       seen: set[tuple] | None = None) -> bool:
    """``module`` computes another operation than its twin (a group norm where the twin applies a
    layer norm, by the op-level diagnosis of the module alone), and nothing the diagnosis finds is
    about the values of a tensor: weights only change values, so no exchange can make it agree. So
    where all it finds is structural (:func:`_structural`), or where it finds a structural difference
    that a module found so before showed too (``seen``, updated: each block of a port with the same
    bug in every block)."""
    from harness.diagnose import culprit_diagnosis  # re-runs modules; weights only needs it here

    try:
        findings = culprit_diagnosis(report.rows, module, None, weights, candidate)
    except Exception:  # the diagnosis explains; it must never cost the map its alternatives
        return False
    if seen is not None:
        prefix = "" if module == ROOT else f"{module}."
        marks = {(f["kind"], f.get("op"), str(f.get("module", ""))[len(prefix):]) for f in findings if _structural(f)}
        if marks & seen:
            return True
        if findings and len(marks) == len(findings):
            seen.update(marks)
    # a product read as another op (a linear that is a convolution with its kernel laid out right), or
    # one receiving its twin's values in another order (heads concatenated (head_dim, heads)), may differ
    # by the weights' layout: only other ops count
    replaced = [f for f in findings if f["kind"] == "op"
                and not {f["candidate"], f["reference"], f.get("op")} & _PRODUCTS]
    if replaced and all(f["kind"] in ("op", "argument", "attribute") for f in findings):
        return True
    return bool(findings) and all(_structural(f) for f in findings)


def _structural(finding: dict) -> bool:
    """A finding no weights can change: an operation reading no weight that one side applies and the
    other not (a ReLU before the add, a dropped residual's add, an index), or an argument one side
    passes and the other not (an attention mask, a bias). Not an op reading weights (twins paired wrongly by a wrong
    map differ in those), nor a setting's value (a reshape by another head width: a regroup of rows)."""
    if finding["kind"] in ("extra_op", "missing_op"):
        op = str(finding.get("op") or "")
        # a layout op on one side only may follow from rows the map took in another order (a qkv
        # laid out per head, windows folded into the batch): a regroup can still help there
        return bool(op) and op not in _PRODUCTS and op not in REGROUPING and "norm" not in op
    absent = [v is None or v is False for v in (finding["candidate"], finding["reference"])]
    return finding["kind"] == "argument" and absent[0] != absent[1]


_PRODUCTS = frozenset({"linear", "matmul", "bmm", "addmm", "baddbmm", "einsum", "conv1d", "conv2d", "conv3d",
                       "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "scaled_dot_product_attention"})


def _same_inputs(cand: dict, ref: dict, tolerance) -> bool:
    """Every tensor input of a call equal to its twin's, in order, within the row's tolerance."""
    a = [t for t in cand.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    b = [t for t in ref.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not a or len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return False
    return all(float((x.double() - y.double()).abs().max()) <= tolerance.bound(float(y.abs().max()))
               for x, y in zip(a, b) if x.numel())


def _conflict(report, module: str) -> dict[str, Any]:
    settings = _settings_differ(report, module)
    found = next((f["text"] for f in report.diagnosis if f.get("module") == module
                  or str(f.get("module", "")).startswith(f"{module}.")), None)
    why = (f"the twins differ in {'; '.join(settings)}, which no choice of weights can make up" if settings
           else f"the diagnosis: {found}" if found else "the map or the model is wrong there")
    return {"module": module, "text": f"after transfer, {module} disagrees with its reference twin ({why})"}


def _culprit_first(alternatives: Iterable[tuple[WeightMap, tuple | _Order | None]], weights: WeightMap,
                   culprit: str) -> list[tuple[WeightMap, tuple | _Order | None]]:
    """The choices that move a tensor into or out of the culprit first, in their order, then the
    others: a choice that leaves the culprit's own tensors as they are (two norms exchanged beside
    it) cannot make it agree, and the comparisons each choice costs are counted."""
    prefix = "" if culprit == ROOT else f"{culprit}."

    def touches(alternative: WeightMap) -> bool:
        return any(e.candidate.startswith(prefix) for e in _changed(alternative, weights))

    return sorted(alternatives, key=lambda choice: not touches(choice[0]))


def _changed(alternative: WeightMap, weights: WeightMap) -> list[Entry]:
    """The entries of ``alternative`` that are not ``weights``' own: the choice it makes."""
    current = {id(e) for e in weights.entries}
    return [e for e in alternative.entries if id(e) not in current]


def _still_fails(report: Any, culprit: str, alternative: WeightMap, weights: WeightMap, reference: nn.Module,
                 trial: nn.Module) -> bool:
    """Whether the culprit, re-run alone on the reference's recorded inputs with ``alternative``'s
    weights, still disagrees with its twin. A choice of layout for one tensor (a square matrix
    transposed) can only help by fixing the module it sits in, and a re-run costs one module's
    forward where a comparison costs both models' traces and their localization. Only the tensors
    the choice changes are written into ``trial``, and given back ``weights``' values after."""
    from harness.localize import rerun_fails

    row = next((r for r in report.rows if r.candidate == culprit and r.status == "introduced"), None)
    if row is None or row.match.candidate.module is None:
        return False
    changed = _changed(alternative, weights)
    keys = {e.candidate for e in changed}
    replace(weights, entries=changed).transfer(reference, trial)  # the culprit's module is the trial's own
    try:
        return rerun_fails(row) is True
    finally:
        replace(weights, entries=[e for e in weights.entries if e.candidate in keys]).transfer(reference, trial)


def _better(trial, current, change: tuple | _Order | None = None) -> bool:
    """More twins agree, or fewer modules make an error of their own while no new one does; and no
    twin was lost: an exchange that only makes failing rows vanish from the alignment (twins no
    longer found) is no improvement. A cycle of three misplaced blocks is fixed by two exchanges,
    the first of which leaves the disagreeing module disagreeing. An exchange that fixes later
    blocks while an earlier one is still wrong passes no more twins (everything after the earlier
    block disagrees), but takes those blocks off the list of origins. Split projections taking
    their rows per head lose their twins (slices of the fused output's consecutive features) by
    design: their rows are not counted."""
    lost = set(change.owners) if isinstance(change, _Order) and change.kind == "heads" else set()

    def counts(report) -> tuple[int, int]:
        confirmed = [r for r in report.rows if r.match.how != "structure"
                     and not any(r.candidate.endswith(f".{owner}") or r.candidate == owner for owner in lost)]
        return sum(r.passed for r in confirmed), len(confirmed)

    (passing, aligned), (passing_now, aligned_now) = counts(trial), counts(current)
    fewer_origins = set(trial.introduced) < set(current.introduced)
    return (passing > passing_now or fewer_origins) and aligned >= aligned_now


def _scopes(module: str) -> list[str]:
    """``module`` and up to three enclosing modules: where a misordered pair of tensors may sit (a
    conv wrapped in a conv-norm unit in the branch of a block, and the shortcut beside that branch)."""
    scopes = [module]
    while len(scopes) < 4 and module not in (ROOT, ""):
        module = module.rsplit(".", 1)[0] if "." in module else ROOT
        scopes.append(module)
    return scopes


def _alternatives(weights: WeightMap, module: str, inputs: dict[str, torch.Tensor] | None = None,
                  joins: Iterable[tuple[str, ...]] = ()) -> Iterable[tuple[WeightMap, tuple | _Order | None]]:
    """Maps differing from ``weights`` in one ambiguous choice around ``module``: a square matrix
    transposed, a patch-embedding kernel flattened channels-last, another permutation of dims of
    equal size (HWIO kernels with C_in == C_out), two same-shaped tensors of one module exchanged,
    or two submodules holding the same tensor shapes exchanged whole (a shortcut projection
    computed before the main branch on one side and after it on the other); first, split projections
    taking the slices of one fused tensor in another order (:func:`_sibling_orders`; ``inputs``: what
    each candidate module received, :func:`_first_inputs`). Each comes with the exchange ``(prefix,
    a, b)`` or the :class:`_Order` it made, or None."""
    entries = weights.entries
    seen: set[tuple] = set()
    for scope in _scopes(module):
        prefix = "" if scope == ROOT else f"{scope}."
        inside = [k for k, e in enumerate(entries) if e.candidate.startswith(prefix)]
        # siblings first: where the rows of a fused projection went to the wrong split ones, no
        # layout of one tensor can help, and each order costs a comparison where the culprit cannot
        # be re-run alone
        for order in (*_sibling_orders(entries, inside, prefix, inputs), *_operand_orders(entries, prefix, joins)):
            if order not in seen:
                seen.add(order)
                yield replace(weights, entries=_reordered(entries, order)), order
        for k in inside:
            e = entries[k]
            if len(e.shape) == 2 and e.shape[0] == e.shape[1] and len(e.reference) == 1 and ("t", k) not in seen:
                seen.add(("t", k))
                flipped = (*e.steps, {"op": "transpose", "dims": [0, 1]})
                yield replace(weights, entries=[*entries[:k], replace(e, steps=flipped), *entries[k + 1:]]), None
            channels_last = _channels_last_patches(e)
            if channels_last is not None and ("c", k) not in seen:
                seen.add(("c", k))  # a patch embedding flattened (p, p, C) where the other side keeps (C, p, p)
                yield replace(weights, entries=[*entries[:k], replace(e, steps=channels_last), *entries[k + 1:]]), None
            if len(e.steps) == 1 and e.steps[0]["op"] == "permute" and len(e.reference) == 1 and ("p", k) not in seen:
                seen.add(("p", k))  # another order of dims of equal sizes (HWIO kernels with Cin == Cout)
                for dims in shape_permutations(e.shape, e.reference_shapes[0]):
                    if list(dims) != list(e.steps[0]["dims"]):
                        other = ({"op": "permute", "dims": list(dims)},)
                        yield replace(weights, entries=[*entries[:k], replace(e, steps=other), *entries[k + 1:]]), None
        groupings = _row_groupings(entries, inside)
        if scope == module:  # the culprit's own layers: their inputs may come regrouped (heads concatenated (hd, H))
            groupings = (*groupings, *_column_groupings(entries, inside))
        for grouping in groupings:
            if grouping[0] not in seen:
                seen.add(grouping[0])
                changed = dict(grouping[1])
                yield replace(weights, entries=[replace(e, steps=changed[k]) if k in changed else e
                                                for k, e in enumerate(entries)]), None
        for a, b, swap in _subtree_swaps(entries, inside, prefix, module):
            if swap not in seen:
                seen.add(swap)
                yield _exchanged(weights, [swap]), (prefix, a, b)


_ORDERED_SIBLINGS = 4  # siblings tried in every order, at most: 4! - 1 = 23 other orders, each first re-run alone


@dataclass(frozen=True)
class _Order:
    """Another order of sibling projections against one fused tensor, relative to ``prefix``:
    ``slices``: the sibling modules ``owners`` (each holding slices of one fused tensor) take, the
    k-th, the slices the ``order[k]``-th had; ``parts``: the fused module ``owners[0]`` (each of its
    tensors a concatenation of siblings' tensors) concatenates its parts in ``order``; ``peers``: the
    split modules ``owners`` (each taking one split module's tensors as they are) take, the k-th,
    what the ``order[k]``-th took (:func:`_peer_families`); ``mixed``: the slots ``owners`` (with
    ``parts``) take, the k-th, what the ``order[k]``-th took (:func:`_mixed_families`); ``operands``:
    the tensors ``owners``, joined where used, take, the k-th, what the ``order[k]``-th took
    (:func:`_operand_orders`)."""

    prefix: str
    kind: str
    owners: tuple[str, ...]
    order: tuple[int, ...]
    parts: tuple[int | None, ...] = ()  # mixed: the part of its owner's concatenated tensors each slot is
    pattern: tuple = ()  # mixed: where each slot's tensors come from (:class:`_Family`)


def _sibling_orders(entries: list[Entry], inside: list[int], prefix: str,
                    inputs: dict[str, torch.Tensor] | None = None) -> Iterable[_Order]:
    """Every other order of split projections against a fused one (or against split ones:
    :func:`_peer_families`) under ``prefix``. The order of
    use gives the k-th projection called the k-th slice of the fused tensor; a port may call them in
    another order than the fused rows hold them (transformers' YOLOS calls key, value, then query),
    and what decides is what the attention uses each one as. Only where the siblings take slices of
    (or form) tensors of equal parts, up to ``_ORDERED_SIBLINGS`` of them: where the disagreeing
    module can be re-run alone, an order costs a comparison only if the module then agrees. Last,
    the orders moving a separate tensor into a fused one's rows (:func:`_mixed_families`)."""
    families: dict[tuple[str, str], list[str]] = {}  # (kind, fused key) -> owners, in order of first entry
    for k in inside:
        e = entries[k]
        owner = owner_of(e.candidate)[len(prefix):]
        if not owner:
            continue
        if len(e.reference) == 1 and any(st["op"] == "slice" and st["dim"] == 0 for st in e.steps):
            family = families.setdefault(("slices", e.reference[0]), [])
            if owner not in family:
                family.append(owner)
        elif 2 <= len(e.reference) <= _ORDERED_SIBLINGS and e.steps and e.steps[0]["op"] == "concat":
            families.setdefault(("parts", owner), [owner])
    families.update(_peer_families(entries, inside, prefix))
    done = set()
    for (kind, _), owners in families.items():
        count = len(owners) if kind in ("slices", "peers") else len(_parts(entries, prefix + owners[0]) or ())
        if tuple(owners) in done or not 2 <= count <= _ORDERED_SIBLINGS:
            continue
        done.add(tuple(owners))
        for order in permutations(range(count)):
            candidate = _Order(prefix, kind, tuple(owners), order)
            if list(order) != sorted(order) and _reordered(entries, candidate) is not None:
                yield candidate
        if kind == "slices":
            yield from _per_head_orders(entries, prefix, tuple(owners))
    for family in _mixed_families(entries, inside, prefix, inputs):
        separate = [k for k, (_, part) in enumerate(family.slots) if part is None and family.whole[k]]
        for order in permutations(range(len(family.slots))):
            # an order moving no separate tensor reorders the fused rows alone: tried above
            if any(order[k] != k for k in separate):
                yield _Order(prefix, "mixed", tuple(owner for owner, _ in family.slots), order,
                             tuple(part for _, part in family.slots), family.pattern)


def _operand_orders(entries: list[Entry], prefix: str, joins: Iterable[tuple[str, ...]]) -> Iterable[_Order]:
    """Every other order of the reference tensors taken by candidate tensors joined where used under
    ``prefix`` (``torch.stack(list(kernels))``: the operand order pairs the k-th with the k-th the
    reference uses, where the reference may use them in another order than it joins their results),
    up to ``_ORDERED_SIBLINGS`` of them."""
    for keys in joins:
        if not 2 <= len(keys) <= _ORDERED_SIBLINGS or not all(key.startswith(prefix) for key in keys):
            continue
        owners = tuple(key[len(prefix):] for key in keys)
        for order in permutations(range(len(keys))):
            candidate = _Order(prefix, "operands", owners, order)
            if list(order) != sorted(order) and _reordered(entries, candidate) is not None:
                yield candidate


def _peer_families(entries: list[Entry], inside: list[int], prefix: str) -> dict[tuple[str, str], list[str]]:
    """Split projections against split ones: modules of one parent under ``prefix`` whose tensors
    each take one tensor, as they are, of modules of one parent of the reference's, all of the same
    tensor names and shapes (``key``, ``value``, ``query`` called in that order against ``q``, ``k``,
    ``v``: the order of use pairs them crosswise). By candidate parent: ("peers", parent) -> owners."""
    sources: dict[str, set[str]] = {}
    built: dict[str, tuple] = {}
    for k in inside:
        e = entries[k]
        owner = owner_of(e.candidate)[len(prefix):]
        if not owner or len(e.reference) != 1 or e.steps:
            sources.setdefault(owner, set()).add("")  # not a plain copy: no peer
            continue
        sources.setdefault(owner, set()).add(owner_of(e.reference[0]))
        built[owner] = tuple(sorted((*built.get(owner, ()), (_leaf(e.candidate), tuple(e.shape)))))
    families: dict[tuple[str, str], list[str]] = {}
    for owner, refs in sources.items():
        if len(refs) == 1 and "" not in refs and owner in built:
            parent = owner_of(owner)
            families.setdefault(("peers", f"{parent}|{owner_of(next(iter(refs)))}|{built[owner]}"), []).append(owner)
    return {key: owners for key, owners in families.items() if len(owners) >= 2}


@dataclass
class _Family:
    """Slots taking tensors of one fused reference module and of separate ones alike. ``slots``:
    (candidate module relative to the prefix, the part of its concatenated tensors, or None where
    it takes one tensor per tensor); ``sources``: per slot, leaf -> (entry index, reference key,
    its shape, the rows it takes or None, the steps after them); ``whole``: per slot, whether it
    takes whole tensors; ``pattern``: per slot, its source module relative to the reference parent
    and the rows it takes, which another block must repeat to take the same order."""

    slots: tuple[tuple[str, int | None], ...]
    sources: tuple[dict[str, tuple[int, str, tuple[int, ...], Step | None, tuple[Step, ...]]], ...]
    whole: tuple[bool, ...]
    pattern: tuple


def _mixed_families(entries: list[Entry], inside: list[int], prefix: str,
                    inputs: dict[str, torch.Tensor] | None = None) -> list[_Family]:
    """Split projections against a fused one beside a separate one of the same shape: timm's ConViT
    fuses query and key into ``qk`` and projects ``v`` after the attention scores, where a port
    projects ``q``, ``k`` and ``v`` before them; the order of use then gives ``q`` the separate
    tensor and ``k``, ``v`` the fused rows (or, the other way round, a fused ``qk`` the split ``k`` and
    ``v``). Slots (:func:`_slots`) of one candidate parent, fed from modules of one reference parent,
    alike in every tensor's name, shape and further steps, and reading one input where ``inputs``
    tells (an output projection reads what the others computed: no part of them), form a family
    where some take a fused tensor's rows (or are parts) and some a separate tensor whole; up to
    ``_ORDERED_SIBLINGS``."""
    slots = _slots(entries, inside, prefix)
    groups: dict[tuple, list[tuple[str, int | None]]] = {}
    for slot, leaves in slots.items():
        signature = tuple(sorted((leaf, (*_rows_taken(shape, cut), *shape[1:]), str(rest))
                                 for leaf, (_, _, shape, cut, rest) in leaves.items()))
        source = owner_of(next(iter(leaves.values()))[1])
        groups.setdefault((owner_of(slot[0]), owner_of(source), signature), []).append(slot)
    found = []
    for group in groups.values():
        for members in _fed_alike(group, {slot: (inputs or {}).get(prefix + slot[0]) for slot in group}):
            family = _family(slots, members)
            fused = [part is not None or not whole for (_, part), whole in zip(members, family.whole)]
            parted = any(part is not None for _, part in members)
            if 2 <= len(members) <= _ORDERED_SIBLINGS and any(fused) and not all(fused) \
                    and not (parted and not all(family.whole)):  # a part holds a whole tensor, never rows of one
                found.append(family)
    return found


def _slots(entries: list[Entry], inside: list[int], prefix: str) -> dict[tuple[str, int | None], dict[str, tuple]]:
    """Slots under ``prefix``: a candidate module, or one part of a module whose tensors are each
    concatenated from equal parts, taking its tensors from one reference module, whole or a dim-0
    slice each. Per slot (module relative to ``prefix``, part or None): leaf -> (entry index,
    reference key, its shape, the rows it takes or None, the steps after them)."""
    slots: dict[tuple[str, int | None], dict[str, tuple]] = {}
    broken: set[str] = {""}  # owners with a tensor taken otherwise: no slot; nor the prefix's own tensors
    for k in inside:
        e = entries[k]
        owner, leaf = owner_of(e.candidate)[len(prefix):], _leaf(e.candidate)
        cut = e.steps[0] if e.steps and e.steps[0]["op"] == "slice" and e.steps[0]["dim"] == 0 else None
        if len(e.reference) == 1:
            slots.setdefault((owner, None), {})[leaf] = (k, e.reference[0], e.reference_shapes[0], cut,
                                                         e.steps[1:] if cut else e.steps)
        elif e.steps == ({"op": "concat", "dim": 0, "sizes": [s[0] for s in e.reference_shapes]},) \
                and len(set(e.reference_shapes)) == 1:
            for part, (key, shape) in enumerate(zip(e.reference, e.reference_shapes)):
                slots.setdefault((owner, part), {})[leaf] = (k, key, shape, None, ())
        else:
            broken.add(owner)
    return {slot: leaves for slot, leaves in slots.items()
            if slot[0] not in broken and len({owner_of(source[1]) for source in leaves.values()}) == 1}


def _family(slots: dict[tuple[str, int | None], dict[str, tuple]], members: list[tuple[str, int | None]]) -> _Family:
    """The :class:`_Family` of the slots ``members`` (see :func:`_slots`)."""
    sources = tuple(slots[slot] for slot in members)
    modules = [owner_of(next(iter(leaves.values()))[1]) for leaves in sources]
    parent = owner_of(modules[0])
    pattern = tuple((module[len(parent) + 1 if parent else 0:],
                     tuple(sorted((leaf, _rows_taken(s[2], s[3])) for leaf, s in leaves.items())))
                    for module, leaves in zip(modules, sources))
    whole = tuple(all(source[3] is None for source in leaves.values()) for leaves in sources)
    return _Family(tuple(members), sources, whole, pattern)


def _fed_alike(slots: list[tuple[str, int | None]], inputs: dict[tuple[str, int | None], torch.Tensor | None],
               ) -> list[list[tuple[str, int | None]]]:
    """``slots`` in groups reading equal inputs, each in order; a slot whose input is not known
    joins every group."""
    groups: list[list[tuple[str, int | None]]] = []
    for slot in (slot for slot in slots if inputs[slot] is not None):
        group = next((g for g in groups if _equal(inputs[g[0]], inputs[slot])), None)
        if group is None:
            groups.append([slot])
        else:
            group.append(slot)
    return [[slot for slot in slots if inputs[slot] is None or slot in group] for group in groups or [[]]]


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))


def _first_inputs(report: Any) -> dict[str, torch.Tensor]:
    """What each candidate module of ``report``'s rows received first (its first tensor input)."""
    found: dict[str, torch.Tensor] = {}
    for row in report.rows:
        t = row.match.candidate.first_input
        if t is not None:
            found.setdefault(row.candidate, t)
    return found


def _rows_taken(shape: tuple[int, ...], cut: Step | None) -> tuple[int, ...]:
    """The number of rows of a tensor of ``shape`` a dim-0 slice ``cut`` takes (all without one)."""
    return (cut["stop"] - cut["start"],) if cut is not None else shape[:1]


def _sources_moved(entries: list[Entry], family: _Family, order: tuple[int, ...]) -> list[Entry]:
    """``entries`` with the k-th slot of ``family`` taking, tensor by tensor, what the
    ``order[k]``-th took: a part of a concatenation another reference tensor, a split tensor another
    reference tensor, whole or the rows it takes, through its own steps after them."""
    changed = list(entries)
    for k, (_, part) in enumerate(family.slots):
        for leaf, (at, _, _, _, rest) in family.sources[k].items():
            _, key, shape, cut, _ = family.sources[order[k]][leaf]
            e = changed[at]
            if part is None:
                changed[at] = replace(e, reference=(key,), reference_shapes=(shape,),
                                      steps=(cut, *rest) if cut is not None else rest)
            else:
                changed[at] = replace(e, reference=(*e.reference[:part], key, *e.reference[part + 1:]),
                                      reference_shapes=(*e.reference_shapes[:part], shape,
                                                        *e.reference_shapes[part + 1:]))
    return changed


def _parts(entries: list[Entry], owner: str) -> tuple[str, ...] | None:
    """The source modules, in order, of the fused module ``owner``'s tensors, each a concatenation
    of equal parts along dim 0 (``qkv.weight <- cat(q.weight, k.weight, v.weight)``); None if not so."""
    found = None
    for e in entries:
        if owner_of(e.candidate) != owner:
            continue
        sources = tuple(owner_of(k) for k in e.reference)
        if len(e.reference) < 2 or not e.steps or e.steps[0]["op"] != "concat" or e.steps[0].get("dim", 0) != 0 \
                or len(set(e.reference_shapes)) != 1 or found not in (None, sources):
            return None
        found = sources
    return found


def _reordered(entries: list[Entry], order: _Order) -> list[Entry] | None:
    """``entries`` with the siblings in ``order`` (see :class:`_Order`); None where the entries
    under its prefix are not built so (another block, looked at for the same change)."""
    if order.kind == "mixed":
        slots = _slots(entries, [k for k, e in enumerate(entries) if e.candidate.startswith(order.prefix)],
                       order.prefix)
        members = list(zip(order.owners, order.parts))
        if any(slot not in slots or set(slots[slot]) != set(slots[members[0]]) for slot in members):
            return None
        family = _family(slots, members)
        return _sources_moved(entries, family, order.order) if family.pattern == order.pattern else None
    if order.kind == "operands":
        at = {e.candidate: k for k, e in enumerate(entries)}
        members = [at.get(order.prefix + owner) for owner in order.owners]
        if None in members or not _alike([entries[m] for m in members]):
            return None
        changed = list(entries)
        for k, m in enumerate(members):
            source = entries[members[order.order[k]]]
            changed[m] = _with_sources(entries[m], source)
        return changed
    if order.kind == "parts":
        if _parts(entries, order.prefix + order.owners[0]) is None:
            return None
        return [replace(e, reference=tuple(e.reference[k] for k in order.order),
                        reference_shapes=tuple(e.reference_shapes[k] for k in order.order))
                if owner_of(e.candidate) == order.prefix + order.owners[0] else e for e in entries]
    members: list[dict[str, int]] = []  # per sibling: leaf -> entry index
    for owner in order.owners:
        found = {_leaf(e.candidate): k for k, e in enumerate(entries) if owner_of(e.candidate) == order.prefix + owner}
        if not found or any(len(entries[k].reference) != 1 for k in found.values()):
            return None
        members.append(found)
    if order.kind == "peers":
        return _peers_reordered(entries, members, order.order)
    if order.kind == "heads":
        return _per_head(entries, members, order.order[0])
    for leaf in members[0]:
        parts = [entries[m[leaf]] if leaf in m else None for m in members]
        if any(p is None or p.reference != parts[0].reference or p.shape != parts[0].shape for p in parts):
            return None
    if any(set(m) != set(members[0]) for m in members):
        return None
    changed = list(entries)
    for k, m in enumerate(members):
        for leaf, at in m.items():
            changed[at] = replace(entries[at], steps=entries[members[order.order[k]][leaf]].steps)
    return changed


_HEAD_COUNTS = 8  # head counts tried for slices taken per head, at most (each first re-run alone)


def _per_head_orders(entries: list[Entry], prefix: str, owners: tuple[str, ...]) -> Iterable[_Order]:
    """Split projections taking consecutive rows of one fused tensor, taken instead per head: for
    every head count dividing each slice's bounds (no name tells it), the slices cut from each of
    that many row blocks (:func:`_per_head`)."""
    bounds = [b for e in entries if owner_of(e.candidate)[len(prefix):] in owners and e.candidate.startswith(prefix)
              for b in _cut(e) or (1,)]
    common = math.gcd(*bounds) if bounds else 1
    for heads in [h for h in range(2, common + 1) if common % h == 0][:_HEAD_COUNTS]:
        order = _Order(prefix, "heads", owners, (heads,))
        if _reordered(entries, order) is not None:
            yield order


def _cut(e: Entry) -> tuple[int, int, int] | None:
    """``(start, stop, rows)`` of an entry that is one slice of a reference tensor's rows; else None."""
    if len(e.reference) != 1 or len(e.steps) != 1 or e.steps[0]["op"] != "slice" or e.steps[0]["dim"] != 0:
        return None
    return e.steps[0]["start"], e.steps[0]["stop"], e.reference_shapes[0][0]


def _per_head(entries: list[Entry], members: list[dict[str, int]], heads: int) -> list[Entry] | None:
    """``entries`` with each sibling's slice of rows ``[a, b)`` of a fused tensor taken instead from
    each of ``heads`` row blocks, rows ``[a / heads, b / heads)`` of every block: a fused ``qkv``
    laid out ``(heads, kd + kd + vd)`` (parts of any widths) against separate projections."""
    changed = list(entries)
    for m in members:
        for at in m.values():
            cut = _cut(entries[at])
            if cut is None or any(n % heads for n in cut):
                return None
            (start, stop, rows), rest = cut, list(entries[at].reference_shapes[0][1:])
            changed[at] = replace(entries[at], steps=(
                {"op": "reshape", "shape": [heads, rows // heads, *rest]},
                {"op": "slice", "dim": 1, "start": start // heads, "stop": stop // heads},
                {"op": "reshape", "shape": [stop - start, *rest]}))
    return changed


def _peers_reordered(entries: list[Entry], members: list[dict[str, int]], order: tuple[int, ...]) -> list[Entry] | None:
    """``entries`` with the k-th peer taking, tensor by tensor, what the ``order[k]``-th took."""
    if any(set(m) != set(members[0]) for m in members) or any(
            entries[m[leaf]].shape != entries[members[0][leaf]].shape or entries[m[leaf]].steps
            for m in members for leaf in m):
        return None
    changed = list(entries)
    for k, m in enumerate(members):
        for leaf, at in m.items():
            source = entries[members[order[k]][leaf]]
            changed[at] = replace(entries[at], reference=source.reference, reference_shapes=source.reference_shapes)
    return changed


def _same_order_elsewhere(weights: WeightMap, order: _Order) -> WeightMap | None:
    """The order that helped in one block, made in every other block holding siblings of the
    same relative names built alike; None if there is none."""
    first = order.owners[0]
    name = (lambda e: e.candidate) if order.kind == "operands" else (lambda e: owner_of(e.candidate))  # tensors joined
    prefixes = {name(e)[:-len(first)] for e in weights.entries if name(e) == first or name(e).endswith(f".{first}")}
    entries, changed = weights.entries, False
    for prefix in sorted(prefixes - {order.prefix}):
        again = _reordered(entries, replace(order, prefix=prefix))
        if again is not None:
            entries, changed = again, True
    return replace(weights, entries=entries) if changed else None


def _row_groupings(entries: list[Entry], inside: list[int]) -> Iterable[tuple[tuple, list[tuple[int, tuple]]]]:
    """Other orders of the output rows of a fused projection (a ``qkv`` weight of ``g * C`` rows
    and its bias): rows laid out per head, ``(heads, g, head_dim)``, where the other side keeps
    ``(g, heads, head_dim)``, or the reverse. Per module: (a key, [(entry index, its new steps)])."""
    owners: dict[str, list[int]] = {}
    for k in inside:
        e = entries[k]
        if len(e.reference) == 1 and e.shape and not any(st["op"] in ("slice", "concat") for st in e.steps):
            owners.setdefault(owner_of(e.candidate), []).append(k)
    for owner, ks in owners.items():
        weight = next((entries[k] for k in ks if len(entries[k].shape) == 2), None)
        if weight is None or {entries[k].shape[0] for k in ks} != {weight.shape[0]} or weight.shape[0] < 2 * weight.shape[1]:
            continue
        rows = weight.shape[0]
        for groups in (3, 2):
            for heads in (h for h in range(2, rows // groups) if rows % groups == 0 and (rows // groups) % h == 0):
                for outer, inner in ((groups, heads), (heads, groups)):
                    yield ("rows", owner, outer, inner), [
                        (k, (*entries[k].steps, *regrouped_rows(entries[k].shape, outer, inner))) for k in ks]


_COLUMN_GROUPINGS = 32  # regroupings of one weight's input columns tried, at most: (a, b) -> (b, a) for a * b = in


def _column_groupings(entries: list[Entry], inside: list[int]) -> Iterable[tuple[tuple, list[tuple[int, tuple]]]]:
    """Other orders of a weight's input columns (dim 1): laid out ``(a, b)`` on one side and
    ``(b, a)`` on the other. A layer reading attention heads concatenated as ``(head_dim, heads)``
    where its twin reads ``(heads, head_dim)`` takes its twin's weight so regrouped; no name tells
    the head count, so every split of the columns into two factors is a candidate (each first
    tried on the disagreeing module alone). Per weight: (a key, [(entry index, its new steps)])."""
    for k in inside:
        e = entries[k]
        if len(e.shape) < 2 or e.shape[0] < 2:
            continue  # no matrix nor kernel: a vector stored (1, C, 1, 1), a table (1, N, C)
        columns = e.shape[1]
        splits = [a for a in range(2, columns // 2 + 1) if columns % a == 0][:_COLUMN_GROUPINGS]
        for outer in splits:
            regrouped = regrouped_columns(e.shape, outer, columns // outer)
            yield ("columns", e.candidate, outer), [(k, (*e.steps, *regrouped))]


def _channels_last_patches(e: Entry) -> tuple[Step, ...] | None:
    """For a reshape between a conv kernel ``(D, C, kh, kw)`` and a linear weight ``(D, C*kh*kw)``:
    the same with the linear's inputs in channels-last order ``(kh, kw, C)``; None otherwise."""
    if len(e.reference) != 1 or len(e.steps) != 1 or e.steps[0]["op"] != "reshape":
        return None
    source, target = e.reference_shapes[0], e.shape
    kernel = target if len(target) == 4 else source
    if len(kernel) != 4 or kernel[1] == 1 or kernel[2] * kernel[3] == 1:
        return None  # one channel or a 1x1 kernel: both orders are the same tensor
    if len(source) == 2:  # linear -> conv kernel
        d, c, kh, kw = target
        return ({"op": "reshape", "shape": [d, kh, kw, c]}, {"op": "permute", "dims": [0, 3, 1, 2]})
    if len(target) == 2:  # conv kernel -> linear
        return ({"op": "permute", "dims": [0, 2, 3, 1]}, {"op": "reshape", "shape": list(target)})
    return None


def _exchanged(weights: WeightMap, swaps: Iterable[tuple[tuple[int, int], ...]]) -> WeightMap:
    changed = list(weights.entries)
    for swap in swaps:
        for x, y in swap:
            changed[x], changed[y] = _swap_sources(changed[x], changed[y])
    return replace(weights, entries=changed)


def _same_exchange_elsewhere(weights: WeightMap, change: tuple) -> WeightMap | None:
    """The exchange that helped in one block, made in every other block of the same structure
    (repeated stages misorder their tensors alike); None if there is no other such block."""
    prefix, a, b = change
    entries = weights.entries
    prefixes = set()
    for e in entries:
        key = e.candidate
        for at in range(len(key)):
            if (at == 0 or key[at - 1] == ".") and key.startswith(f"{a}.", at) or key[at:] == a:
                prefixes.add(key[:at])
    swaps = []
    for other in sorted(prefixes - {prefix}):
        inside = [k for k, e in enumerate(entries) if e.candidate.startswith(other)]
        modules = _modules(entries, inside, other)
        if a in modules and b in modules and _signature(entries, modules[a]) == _signature(entries, modules[b]):
            swaps.append(tuple((modules[a][rel], modules[b][rel]) for rel in sorted(modules[a])))
    return _exchanged(weights, swaps) if swaps else None


def _modules(entries: list[Entry], inside: list[int], prefix: str) -> dict[str, dict[str, int]]:
    """Every module (and tensor) below ``prefix``: relative name -> {key relative to it: entry index}."""
    by_module: dict[str, dict[str, int]] = {}
    for k in inside:
        parts = entries[k].candidate[len(prefix):].split(".")
        for depth in range(len(parts)):
            by_module.setdefault(".".join(parts[:depth + 1]), {})[".".join(parts[depth + 1:])] = k
    return by_module


def _signature(entries: list[Entry], members: dict[str, int]) -> tuple:
    return tuple(sorted((rel, entries[k].shape, entries[k].reference_shapes) for rel, k in members.items()))


def _named_alike(entries: list[Entry], members: dict[str, int]) -> bool:
    return all(_leaf(entries[k].candidate) == _leaf(entries[k].reference[0]) for k in members.values())


def _subtree_swaps(entries: list[Entry], inside: list[int], prefix: str,
                   culprit: str) -> list[tuple[str, str, tuple[tuple[int, int], ...]]]:
    """Pairs of disjoint submodules under ``prefix`` (or single tensors of one module) whose mapped
    tensors have the same relative names and shapes, with the index pairs to exchange. Exchanges
    that move the disagreeing module's own tensors come first, whole modules before their parts."""
    by_module = _modules(entries, inside, prefix)
    target = culprit[len(prefix):] if culprit != ROOT else ""

    def involves(name: str) -> bool:
        return bool(target) and (target == name or target.startswith(f"{name}.") or name.startswith(f"{target}."))

    ranked = []
    wholes: set[tuple[str, str]] = set()  # modules offered for exchange whole, before their tensors
    for a, b in sorted(combinations(sorted(by_module), 2), key=lambda pair: "" in by_module[pair[0]]):
        if a.startswith(f"{b}.") or b.startswith(f"{a}.") or _signature(entries, by_module[a]) != _signature(entries, by_module[b]):
            continue
        if any(len(entries[k].reference) != 1 for k in (*by_module[a].values(), *by_module[b].values())):
            continue
        if "" in by_module[a] and _named_alike(entries, by_module[a]) and _named_alike(entries, by_module[b]) \
                and (owner_of(a) == owner_of(b) or _leaf(a) != _leaf(b)):
            # two tensors each under its source's name: of one module, names settled their order;
            # of two roles (a bias, a running mean), the exchange would swap the roles
            continue
        if "" in by_module[a] and (owner_of(a), owner_of(b)) in wholes:
            continue  # one tensor of each of two modules offered for exchange whole
        if "" in by_module[a] and _leaf(a) == _leaf(b) == "num_batches_tracked":
            continue  # batch norm counters: no eval-mode forward reads them
        swap = tuple((by_module[a][rel], by_module[b][rel]) for rel in sorted(by_module[a]))
        if "" not in by_module[a]:
            wholes.add((a, b))
        ranked.append(((not (involves(a) or involves(b)), -len(swap), a, b), (a, b, swap)))
    return [item for _, item in sorted(ranked)]
