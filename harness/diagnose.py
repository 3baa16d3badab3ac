"""Say what the error is: the first diverging torch operation inside the culprit, and why.

Algorithm, for the culprit row of a failing comparison (full mode only):

1. Re-run. The candidate module and its reference twin are deep-copied, cast to float64 (so that
   rounding cannot hide a bug, and the diagnosis reads the same at every comparison dtype) and
   run on copies of the reference's recorded inputs, both under :class:`OpRecorder`, a
   ``TorchFunctionMode`` that sees every torch function called in the forward: ``F.layer_norm``,
   ``torch.matmul``, ``x * gamma``, ``x.softmax(-1)``... (calls nested inside a recorded call are
   not seen: the recorder runs with itself disabled, except in ``F.multi_head_attention_forward``, whose
   own body runs with the recorder on: ``nn.MultiheadAttention``'s projections and attention are
   seen one by one, as the other side writes them). A tensor passed twice is copied once (``mha(x, x, x)``
   keeps its self-attention path); a candidate taking other flags or keyword names gets the reference's
   tensors in its own arguments where they pair one to one (one it passes several times counted
   once), brought into its layout (NHWC against
   NCHW, of one shape too where C == H == W and only that permutation holds its own input's
   values; where an error from upstream leaves its own inputs near no layout of the reference's,
   the closest, each tensor pairing with the one of its size). A culprit without a twin, fed other values than its twin (windows its block did not
   shift), a map of another size (padded by its parent before it), or one its twin receives
   shifted (a rolling layout relates them: the twin's parent shifts, the culprit itself), is explained
   through its innermost twinned ancestor, which runs the same code: one whose output the error
   reaches, else, where a later op cancels it (a norm with a zero scale), one it vanishes in.
   Before that, a culprit without a twin names each tensor holding other values than the weight map
   puts there: those values with the dims permuted (stored transposed), or reordered along its axes,
   said in the reference tensor's layout, the map's reshapes and permutes undone (a patch kernel
   flattened into a linear's columns, read BGR: its input channels reversed), another reference
   tensor's values (a class token holding the distillation token's), or, where it differs in one
   block only, that block (a relative position table's row zeroed).
   So is a culprit twinned by shape alone whose twin runs only a part of its computation (every
   finding an op the candidate runs beyond it: an ``nn.MultiheadAttention`` paired with the output
   projection of an attention its reference parent writes out), where the ancestor, twinned by
   more, finds more than ops of its own.
   When either twin cannot be copied or cast
   (a forward patched with a closure over the original), both run as they are, in their own dtype,
   under ``no_grad`` with their parameters and buffers snapshotted and restored bitwise (only the
   changed ones written back: a comparison leaves the models' version counters as they were).
2. Canonicalize. Spellings of one operation get one name (``__mul__``/``mul``/``mul_`` -> ``mul``,
   ``view`` -> ``reshape``, ``addmm`` -> ``linear``, ``bmm``/``@``/two-operand ``einsum`` ->
   ``matmul``, ``addcmul(x, a, b)`` -> ``a * b`` then ``x + ...`` (the ops a port writes for it),
   an adaptive average pool to size 1 -> ``mean`` over its spatial dims, kept; a mean of a mean,
   kept, over other dims -> one mean over both; a pad of zero width vanishes; ``baddbmm(x, a, b,
   beta, alpha)`` -> ``a @ b``, ``* alpha``, ``beta * x +``, each where it computes something; ``1 - x``,
   which Python calls as ``x.__rsub__(1)``, -> ``sub(1, x)``, never ``x - 1``; ``x * 2 * pi`` -> one
   ``mul`` by the product, a chain of scalings by numbers each read by the next alone), non-tensor
   arguments are bound to parameter names with their defaults (``eps``, ``approximate``,
   ``dim`` made non-negative, ``stride`` as a tuple), and tensor arguments that are the module's
   parameters or buffers (or views of them) are named (``gamma``), with their values as stored
   and as passed (a kernel stored HWIO, permuted for the conv), read before the op runs (an
   ``embedding`` looked up at position ids held as a buffer is a view of its table); an op
   that only updates the module's own state (``num_batches_tracked += 1``) is no computation; what
   the forward computes from no input and no parameter (offsets from ``arange`` and ``meshgrid``) is
   no op either but a constant operand of the ops reading it, compared by value as a buffer is. A
   softmax written out as ``exp(x - max) / sum`` is one ``softmax`` wherever it stands. A written-out attention
   ``softmax((q * s) @ k^T) @ v`` (the softmax written out as ``exp(x - max) / sum`` over the keys
   too) becomes one ``scaled_dot_product_attention`` with its effective ``scale`` and its mask:
   all that is added to the scores before the softmax (a bias, then a window mask), compared by
   value with the fused call's ``attn_mask`` (holding other values: the one block of a table it is
   built from that differs, a row zeroed; one adding nothing, every key kept, is no mask, and the ops
   building it that it alone reads are none), be it a parameter or a computed value (the adds that
   build it are part of it; one holding the reference's laid out otherwise, queries for keys, is named
   permuted). ``x @ W`` with ``W`` a matrix parameter (or an einsum contracting the
   input's last dim with a matrix parameter, ``'bnc,oc->bno'``,
   whichever way the matrix is stored, or with a parameter of more dims, each contracting one of the
   input's or written to the output: a fused q/k/v kernel ``'bnc,shdc->sbhnd'``, an output projection
   merging the heads ``'bhnd,hdc->bnc'``, its bias broadcast on the axes it writes), and a parameter vector added to its output features after,
   is one ``linear`` with weight ``W^T``: a port storing its weights ``(in, out)`` or writing its
   linears as einsums; so is a token-mixing einsum (``'bnc,nh->bhc'``) with its bias broadcast on the
   axis it writes (``b[None, :, None]``), and ``t + x @ W + b``, which Python adds as ``(t + x @ W) + b``.
   A linear over the channels and a 1x1 conv of stride 1, no padding and one group are one op
   in two spellings (``x @ W`` on NHWC against the reference's fuse conv).
   ``F.unfold`` then a linear on the patches is one ``conv2d``, its weight reshaped to the kernel's
   (a depthwise one where each channel's patches meet their own kernel row, ``'bckhw,kc->bhwc'``);
   a batch norm written out, ``(x - mean) * rsqrt(var + eps) * scale + bias`` (or ``/ sqrt(...)``), is
   one ``batch_norm`` whose ``eps`` is the constant added to ``var`` and whose ``divides_by`` says
   what ``x - mean`` is divided by, as is one frozen into a scale and a shift computed from its
   parameters and buffers, ``x * s + t`` with ``s = scale * rsqrt(var + eps)``, ``t = bias - mean * s``
   (torchvision's ``FrozenBatchNorm2d``: which tensor plays which role, read from the values); a
   zero ``F.pad`` read only by a convolution is its ``padding``, a reflecting, replicating or circular
   one before a convolution of no padding its ``padding`` and ``padding_mode`` (``Conv2d(padding_mode=
   'reflect')`` runs just that); a ``-inf`` pad read only by a max pool is its ``padding`` and
   ``ceil_mode`` (the last window padded, then a floor pool); each only where its arithmetic
   computes that operation. A cat
   of a parameter with activations (a class token prepended) is no view of that parameter.
   Dropout in eval mode, casts to the same dtype and resizes to the size the input has
   vanish (``zeros_like(v_bias)``, which reads only a shape, is a constant operand), as does a cast, in a copy re-run at float64, to the dtype the models were compared at
   (``x.to(torch.float32)`` in a float32 model cast nothing there: the copy goes on at float64).
   Ops that only move values (reshape, permute, cat, indexing, windows cut with
   ``x.unfold(dim, size, step)``...) are kept apart as layout ops: implementations spell them in
   too many ways to align them usefully.
3. Fuse siblings: one operation applied to one input by several modules in a row (``q``, ``k``,
   ``v`` projections), or apart (a SwiGLU's gate and up projections, the gate's activation between
   them: in the first one's place), becomes one op, its output and parameters concatenated, where the other
   side computes that concatenation in one op (a fused ``qkv``) from the same input values, or with
   their parameters stacked shape by shape (whatever error the input carries), in any layout (a member
   without a bias adds zeros), in the order the weight map gives their rows of the fused weight,
   on either side (a reference calling ``key``, ``value``, then ``query`` against a port's ``qkv``);
   a parameter holding a slice of its twin's larger one (a split head against a fused 1x1 conv)
   other than the one the weight map puts there names both slices;
   a differing fused parameter names the member whose rows differ (``v_proj.weight`` against
   ``qkv.weight[16:24]``), and what those rows hold: another member's rows (projections exchanged),
   or their own with the dims permuted (a square ``q_proj.weight`` stored transposed); a member
   without a bias holds zeros there: a bias missing, or one the candidate's member has where the
   reference's rows are zeros (Swin V2's key), is said so. A fused tensor the reference builds by
   a cat of several (``cat(q_bias, k_bias, v_bias)``) is compared as passed, its rows named by the
   tensor they come from. A culprit
   twinned to such a slice is explained through its twinned ancestor.
   Convs, one per group, on the channel chunks one split makes of one input are one grouped conv
   where the other side runs a conv of as many groups whose kernel stacks theirs, the join of their
   outputs after them part of it: joined in another order than the chunks, that order is the finding.
   One op called on several inputs in turn (an encoder run on each of two frames) becomes one op,
   its outputs joined along the batch dim, where the other side computes that join in one batched
   call (``torch.cat([a, b], 0)`` through the encoder): the batching spells a layout, no finding.
   Ops computing from parameters alone (a position-bias MLP on its coordinate table, a logit
   scale's clamp and exp) move to just before the first op on the activations reading what they
   compute, on each side: one port builds such a table first thing, another where it adds it; one
   changing in place a parameter a later op reads (a bias's slice zeroed) is that op's operand.
   Align the two computational op streams, first through the parameters their ops read: an op
   reading what one reference op reads (as the weight map puts it), and no other's, is that op's
   twin whatever its name (a 1x1 conv and the linear it ports), unless its result flows into a later
   op of the reference op's name whose parameters hold none of the reference's: that op is the twin (a bias
   table resized by ``interpolate`` becomes the mask of the attention that, in the reference, reads
   the table itself), and a hand-written run of ops reading
   it is that op written out (a batch norm folded into a scale and a shift: the run ends with the
   ops joining what it made, and begins where, from one activation, it computes that op: a
   layer norm's eps add is part of it, never the twin of a residual add the candidate dropped; one
   stored folded, ``x * scale + shift`` with tensors of its own, is the run of the reference's eval
   batch norm that receives what it receives or folds into what it holds, so its shift's add never
   twins a residual add dropped after it);
   between those anchors, by name (``difflib.SequenceMatcher``). A cast that only rounds (to float32
   and back, timm's position table around its resize) where the other side casts to no such dtype
   anchors nothing and pairs with no op: it stays unpaired, so the resize pairs with the resize. Walk the
   aligned pairs in order. Unpaired ops are held as pending until the next pair (an extra op whose
   result holds its input's values, a resize to the size it has, changes nothing and is not): if that pair's
   output agrees, they were harmless spellings; if not, only those whose results flow into it explain
   it. An op replaced by another stays pending past an agreeing pair it does not flow into (a
   context summed as a mean on one branch, the values' activation agreeing on the other), and so
   does an extra op whose result a later op reads (a ReLU on the shortcut, the branch agreeing). An op
   missing in the candidate is a finding on the reference's submodule running it where the
   twins have one name and the candidate has that submodule, else on the candidate module, its text
   naming the reference's submodule. A pair whose output differs while a nearby op of
   the same name agrees (``x * cos + rot * sin`` against ``rot * sin + x * cos``) is a reordering;
   an op missing in one place of a module and extra in another (run by a submodule of it) is one
   op moved (onto an operand of the op joining branches that reads it), as is one missing where
   the candidate runs it in another place to no effect (a ReLU on a shortcut that holds no negative
   values); an op missing in a module that the candidate ran on the module's input before it (it
   receives what that op, re-run on the reference's input, gives: a ReLU before the norm whose
   reference applies it after) is that op applied before the module. A moved op reading parameters
   is named with them (a talking-heads mix applied after the softmax). A join found extra before
   the diverging pair and missing after it, joining on both sides one value that agrees (the
   block's input: a residual add) with what the pair's op takes or gives, keeps its place: the
   pair's op is in another place (a layer scale applied to the sum, not the branch), named so.
   A pair of other shapes (a GELU on each half of the features where the reference's runs on both,
   one path weighed at a time where the reference weighs them stacked) whose results rejoin the
   reference's further on (a later pair, each computed from its side's op, agrees) is a rewrite,
   as is a pair of which the candidate computes a part along one dim (the patch tokens' positions
   added apart from the class token's), an extra op computing another part of it changing nothing:
   the walk goes on after that pair. A join found missing with the missing ops whose results only
   it reads (a shortcut's conv and norm before the residual add) is one finding, the join's, naming
   them, and saying so where an op of the candidate whose result nothing reads computes what they
   compute (a shortcut run before the main branch, then never added). Two ops of one name reading one input with each other's parameters (a decomposed relative
   position's height and width tables), paired crosswise by those values, are named as exchanged.
   Ops of other names in each other's place are findings only where their results differ and, after
   the first such op, where their inputs agree: another spelling of one operation (``relu6`` for
   ``hardtanh(0, 6)``) is none, and an op that only receives what a replaced op before it changed
   is no lead; nor are the unpaired ops after such a replacement (a head written as a 7x7 conv
   against a flattening linear after a max pool that replaced an average pool). A run of ops in the
   place of one reference op (a layer norm, a GELU, a softmax written out by hand) is that op where
   it gives what the reference's call, re-run on the one activation the run receives, gives (the
   ops after the part that does are extra); else the run is the finding, not its first op (the right
   port writes it out too): a parameter it reads holding other values or passed in another layout
   than the reference op's of that role (a hand-written norm's scale), else what differs where its ops and arguments show it (an unbiased ``var``,
   eps added outside the square root or another eps under it, the tanh formula of an erf GELU, a
   softmax summed over another dim; a kernel standardized by its mean and variance against a
   batch norm on the kernel: the extra ops feeding the op in the norm's place are that run), and by
   how much it differs from the re-run op (in the
   layout that best holds its values).
   The first pair whose output differs (float64 tolerance, widened by a few units in the last place
   of the dtype the models were compared at, where the copies are wider: a port's weights folded or
   converted at float32 differ from the reference by that rounding, which no port at that dtype avoids)
   is the divergence; a pair one side computes in float32 (a softmax given ``dtype=float32``, cast back)
   agrees within float32's rounding of its scale, as does every pair after it, and a precision
   difference is said after any value difference that explains the pair; where it is the module's one
   difference (what it returns agrees only within that rounding), it is the finding ("softmax computed
   in float32 in the candidate, float64 in the reference"), what it returns compared on the leaves
   that pair with its twin's (an attention returning its weights too, as transformers' eager one does). Two products joined by one add whose factors all agree with the reference's,
   grouped otherwise (a gate's ``g`` and ``1 - g`` exchanged between the branches it mixes), are
   said as those factors exchanged, before anything else. Otherwise it is explained by
   the pending missing / extra / different ops (not one whose result reaches the pair only through
   operands that agree with the other side's: a mask built with ``masked_fill(~keep, -inf)`` where
   the reference's attention converts a padding mask itself), an attention's head count where its q, k and v hold
   as many values for as many tokens in heads of another size (said before the scale
   ``1/sqrt(head size)`` that follows from it, which is then no finding; also where one side folds
   the heads into the batch for ``bmm``, and where both do, counted by the batch of the module's
   tokens; an einsum's query read in the fused call's axis order, ``'bnhd,bmhd->bhnm'`` as
   ``(B, H, N, D)``), a mask masking other positions than the reference's (how many it masks that the
   reference keeps and keeps that it masks, and its polarity said inverted where it masks just
   what the reference keeps), its differing non-tensor arguments (a number in the other operand's
   place, ``x - 1`` against ``1 - x``, as operands in another order; not ``inplace``
   or ``keepdim``, which say only where or in what shape the result is written; nor a norm's
   ``normalized_shape`` of as many trailing elements, ``(P, C)`` against ``(P * C,)``; a None an op reads
   as a value, ``align_corners``, is that value; a number passed where the other side passes a
   parameter names that parameter: a layer scale left ``1.0``), a parameter
   holding other values, compared with the reference's in one layout (a ``(C,)`` scale on NHWC
   against its ``(1, C, 1, 1)`` view on NCHW; ``add``/``mul`` operands paired whatever their side)
   (``weight`` holds the reference's ``bias``, or another module's tensor anywhere in the reference
   model, as it is, reshaped or transposed: a swap, unless it holds one value throughout, which
   any tensor of that value would match: a layer scale left at ones is said to hold a constant; its
   own twin's with the dims permuted: stored transposed, operands of one shape but for axes of size
   1 compared as they lie: a linear's square weight transposed against a 1x1 conv's; its twin's
   values reordered along its axes, said in the op's words: a fused projection's q and k row blocks
   exchanged, a kernel's input channels reversed; one stored right but passed where the reference
   passes another of the op's
   operands: a norm's mean and variance swapped; one stored right but passed changed: the block holding
   every difference zeroed (a class token's position left out of the add) or holding other values,
   or its values reordered, a table rolled), a parameter stored right of which the op receives
   one slice where the reference passes all of it and no other op receives the rest (a position
   table added to the patches only: ``pos[:, 0:1]`` never added), a parameter one side does not
   pass (a dropped bias; not one a member of fused siblings passes; siblings whose parameters differ
   in shape past their rows, a 3x3 conv and a 1x1 shortcut on one input, are never fused), or, when
   its inputs already differ while everything computed before agreed, operands
   passed in another order (``key`` where ``query`` belongs; ``k @ q^T`` for ``q @ k^T``, an operand
   holding the other's transposed; a written-out attention's q and k read
   before their scaling and ``k``'s transpose, compared through a reshape where one side folds the
   heads into the batch), another part of what the reference splits (a split, chunk or unbind of a
   fused projection) than the part it passes there (key and value slices taken in another order,
   whatever op reads them), or a part of what the candidate splits where the reference's input
   holds another part's values (a fused gate|up projection's halves swapped), an input holding what
   another reference op computes than the one the reference's op reads (the activation of a SwiGLU
   with separate gate and up projections applied to the up one), or a value computed on the way to
   what it reads, through a step the candidate runs too (a norm's input, where the reference's op
   reads the norm's output), the reference's
   values reordered along some axes (made by a join of operands each holding one of the reference's
   join's in another place: that join's operands exchanged, said first, on the module running it),
   each on its own (slices joined in another order, a roll, a flip: :func:`rearrangement`; in the
   reference's layout where it receives another: windows put back each transposed), the
   vectors of the last agreeing op's result gathered at other places than the reference's, which
   no reordering axis by axis gives (windows cut where the reference cuts a grid, a patch's pixels
   folded back transposed: the steps each input takes through that result along its axes), a part
   of the reference's input (its patch tokens) with a parameter operand holding another part of
   the reference's (a position table sliced a row off: the slice it holds), or the
   layout ops between (a transpose missing before a reshape; a roll or flip one side only applies
   first, before ops that only spell a layout otherwise; not those that only bring a value
   into the layout the other side computes it in, nor those by which one side already holds what
   the other's diverging op receives: a transpose added after the reshape both do, where the
   reference does them in the caller, is that transpose). So is an input that holds its twin's values
   only through a layout adapter (a conv run on a map with H and W exchanged). Outputs agree in any
   layout (:mod:`harness.adapters`): an einsum may write ``(B, N, H, D)`` where the fused attention
   writes ``(B, H, N, D)``, a token-mixing einsum ``(B, N, C)`` where a linear on transposed tokens
   writes ``(B, C, N)``, even with ``N == C``; a value computed once agrees with its copies per batch
   element (scores of a position table the other side expands over the batch first). A pair agreeing only with two axes of one size exchanged,
   which no layout convention does (tokens and heads, as many of each: ``q * scale`` on q split per
   token against the reference's per head), is held: a later op it feeds agreeing as it is shows the
   layout harmless, and the search goes on; an op differing first is explained at the held pair (a
   square map's H and W exchanged). An op paired crosswise with the twin of a reference op found
   missing before it (the query normalized, the key not) leaves the op in its own place missing
   instead. A pair receiving the same inputs and arguments whose
   results of one shape differ is explained by a parameter operand spread over other axes of the
   result than its twin's (a layer scale passed as one of its values, or along the width where the
   reference's runs along the channels). When no pair differs but the module output does, the
   pending ops at the end explain it (a residual ``add`` missing after the last operation; not ops
   that compute what an op of the other side computes elsewhere: branches run in another order),
   else the layout ops after the last pair (a join of the reference's operands in another order,
   ``cat([right, left])``, named with how the output holds the reference's values reordered: first
   where the join is returned as it is, after it where a shuffle moves them again), else the
   reference's values returned reordered, found in the twin's layout where it returns another
   (a window reverse reading each window transposed, against a twin returning the windows): where
   the twins return other layouts, said before a reshape or permute one side writes and the other
   does not, which only spells a layout (of one layout, that reshape missing is the finding: a
   channel shuffle left out; layout ops of other names on both sides, a shuffle as a gather against
   view, transpose, view, are the port's spelling: the values they return reordered are the finding).
   A finding on an op that no submodule of the candidate runs (a port written as
   functions) says which call it is: the reference module running its twin (where both receive the
   same parameters) and its place among the candidate's calls of that op (``layer_norm call 2 of
   5``).
4. Attribute diff. Submodules of the two twins (paired by relative name, else in order among
   those with the same kinds of settings and own tensors of the same shapes) are compared on their plain
   settings (``eps``, ``approximate``, ``stride``, ``groups``, ``inplace``...): what differs is
   reported even when no op shows it (``stride`` 1 is ``(1, 1)``; ``momentum`` and a dropout's ``p`` count in training only;
   ``training`` only for a module whose code reads it: a dropout, a batch norm, not an activation).

Findings on a twin that runs a module and the call after it as one (a batch norm and its activation)
name that module's tensors as the model does (``1.running_var``, never the pair's ``head.running_var``).

Findings are ranked argument, missing_op, extra_op, op, attribute, value: an argument names the
value to fix, an attribute may be a harmless difference of style (``fused=True``).
"""

from __future__ import annotations

import copy
import difflib
import functools
from collections import Counter
import inspect
import itertools
import math
import re
import types
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Collection, Iterable, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from harness.adapters import agreeing_layout, find_adapter, in_layout_of, layouts, unit_axes_dropped
from harness.metrics import DEFAULT_TOLERANCES, Tolerance, measure
from harness.trace import ROOT, flatten_tensors, hookable_modules, map_tensors
from harness.keymap import apply_steps, invert_steps
from harness.weightmap import shape_permutations

__all__ = ["Op", "OpRecorder", "record_ops", "record_values", "diagnose", "diagnose_modules", "attribute_diff", "culprit_diagnosis",
           "origins_diagnosis", "setting_notes", "reads_training", "rearrangement", "KINDS"]

KINDS = ("argument", "attribute", "missing_op", "extra_op", "op", "value")
# most specific first: an argument names the value to fix; a missing op says what to add; an
# attribute diff may be a harmless difference of style (fused=True) and comes after the ops
_RANK = ("argument", "missing_op", "extra_op", "op", "attribute", "value")

# -- canonical names ---------------------------------------------------------------------------
_ALIASES = {
    "multiply": "mul", "true_divide": "div", "divide": "div", "truediv": "div", "subtract": "sub",
    "bmm": "matmul", "mm": "matmul", "view": "reshape", "_unsafe_view": "reshape", "swapaxes": "transpose",
    "swapdims": "transpose", "T": "transpose", "mT": "transpose", "t": "transpose", "concat": "cat",
    "concatenate": "cat", "_softmax": "softmax", "special_softmax": "softmax", "view_as": "reshape",
    "reshape_as": "reshape", "flatten": "reshape", "unflatten": "reshape", "getitem": "index", "rsub": "sub",
}
# reflected spellings of operations whose operands do not commute: ``1 - x`` calls ``x.__rsub__(1)``,
# recorded as ``sub(1, x)`` (as ``torch.sub(one, x)`` is), never as ``x - 1``
_REFLECTED = frozenset({"__rsub__", "__rtruediv__", "__rdiv__", "__rpow__", "__rmatmul__", "__rfloordiv__",
                        "__rmod__", "rsub"})
# layout ops by what they do to values (canonical names: a view is a reshape): moved, every one kept
# in its place of a new shape; regrouped, still every one kept (a weight map taking rows in another
# order can explain these); or any layout op at all, selecting, repeating or rolling them too
_RELAYOUT = frozenset({"reshape", "permute", "transpose", "contiguous", "movedim", "moveaxis"})
REGROUPING = _RELAYOUT | frozenset({"squeeze", "unsqueeze", "split", "chunk", "tensor_split", "unbind", "cat", "stack"})
LAYOUT = REGROUPING | frozenset({
    "expand", "expand_as", "repeat", "index", "narrow", "select", "clone", "detach", "flip", "roll", "broadcast_to",
})
_CASTS = frozenset({"to", "type", "float", "double", "half", "bfloat16", "type_as"})
_COMMUTATIVE = frozenset({"add", "mul"})
# fused ops recorded as the ops they fuse (``x + a * b``), which the other side may write out
_WRITTEN_OUT = {"addcmul": torch.mul, "addcdiv": torch.div}

# Parameter names of builtins (no inspect.signature): canonical name -> (name, default) in order.
_NO_DEFAULT = object()
_SIGNATURES: dict[str, tuple[tuple[str, Any], ...]] = {
    "linear": (("input", _NO_DEFAULT), ("weight", _NO_DEFAULT), ("bias", None)),
    "gelu": (("input", _NO_DEFAULT), ("approximate", "none")),
    "silu": (("input", _NO_DEFAULT), ("inplace", False)),
    "softmax": (("input", _NO_DEFAULT), ("dim", None), ("dtype", None)),
    "log_softmax": (("input", _NO_DEFAULT), ("dim", None), ("dtype", None)),
    "scaled_dot_product_attention": (
        ("query", _NO_DEFAULT), ("key", _NO_DEFAULT), ("value", _NO_DEFAULT), ("attn_mask", None),
        ("dropout_p", 0.0), ("is_causal", False), ("scale", None), ("enable_gqa", False)),
    "layer_norm": (("input", _NO_DEFAULT), ("normalized_shape", _NO_DEFAULT), ("weight", None),
                   ("bias", None), ("eps", 1e-5)),
    "add": (("input", _NO_DEFAULT), ("other", _NO_DEFAULT), ("alpha", 1)),
    "sub": (("input", _NO_DEFAULT), ("other", _NO_DEFAULT), ("alpha", 1)),
    "mul": (("input", _NO_DEFAULT), ("other", _NO_DEFAULT)),
    "div": (("input", _NO_DEFAULT), ("other", _NO_DEFAULT), ("rounding_mode", None)),
    "matmul": (("input", _NO_DEFAULT), ("other", _NO_DEFAULT)),
    "transpose": (("input", _NO_DEFAULT), ("dim0", _NO_DEFAULT), ("dim1", _NO_DEFAULT)),
    "mean": (("input", _NO_DEFAULT), ("dim", None), ("keepdim", False), ("dtype", None)),
    "sum": (("input", _NO_DEFAULT), ("dim", None), ("keepdim", False), ("dtype", None)),
    "pow": (("input", _NO_DEFAULT), ("exponent", _NO_DEFAULT)),
    "cat": (("tensors", _NO_DEFAULT), ("dim", 0)),
    "stack": (("tensors", _NO_DEFAULT), ("dim", 0)),
}
for _n in ("avg_pool1d", "avg_pool2d", "avg_pool3d"):  # nn.AvgPool2d passes them all by position
    _SIGNATURES[_n] = (("input", _NO_DEFAULT), ("kernel_size", _NO_DEFAULT), ("stride", None), ("padding", 0),
                       ("ceil_mode", False), ("count_include_pad", True), ("divisor_override", None))
for _n in ("max_pool1d", "max_pool2d", "max_pool3d"):
    _SIGNATURES[_n] = (("input", _NO_DEFAULT), ("kernel_size", _NO_DEFAULT), ("stride", None), ("padding", 0),
                       ("dilation", 1), ("ceil_mode", False), ("return_indices", False))
for _n in ("conv1d", "conv2d", "conv3d"):
    _SIGNATURES[_n] = (("input", _NO_DEFAULT), ("weight", _NO_DEFAULT), ("bias", None), ("stride", 1),
                       ("padding", 0), ("dilation", 1), ("groups", 1))
_DIM_ARGS = frozenset({"dim", "dim0", "dim1", "dims"})
_SPATIAL_ARGS = frozenset({"stride", "padding", "dilation", "kernel_size", "output_padding"})
_WINDOWED = ("conv", "avg_pool", "max_pool")  # ops whose spatial arguments an int gives for every axis


def canonical_name(func: Callable) -> str:
    """One name per operation, whatever the spelling (``Tensor.__rmul__`` -> ``mul``)."""
    name = getattr(func, "__name__", None) or str(func)
    if name == "__get__":  # a property such as ``x.T``: name it after the descriptor
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name[:1] in "ri" and name[1:] in ("add", "sub", "mul", "truediv", "matmul", "div", "pow", "and", "or"):
            name = name[1:]
    elif name.endswith("_") and not name.startswith("_"):
        name = name[:-1]  # in-place variant: same math
    return _ALIASES.get(name, name)


# -- recording ---------------------------------------------------------------------------------
@dataclass
class Op:
    """One recorded torch call, canonicalized."""

    index: int
    name: str
    spelling: str
    args: dict[str, Any]  # non-tensor arguments, bound to parameter names with defaults
    params: dict[str, str]  # argument name -> module parameter/buffer name (views included)
    param_values: dict[str, torch.Tensor]  # copies of those parameters as the module holds them
    input_ids: list[int]  # ids of activation tensors flowing in
    out_ids: list[int]
    outputs: list[torch.Tensor]  # detached copies
    scope: str = ""  # innermost submodule (relative name) running the op
    kind: str = "compute"  # "compute" | "layout" | "noop"
    absorbed: bool = False  # folded into a composite op
    operands: dict[str, torch.Tensor] = field(default_factory=dict)  # the parameters as passed (a permuted kernel)
    named_inputs: dict[str, int] = field(default_factory=dict)  # argument name -> id of the activation passed
    # an attention's additive mask or bias as its scores receive it (written out: every mask added), and the
    # parameters it is built from
    mask: torch.Tensor | None = None
    mask_params: tuple[str, ...] = ()
    # sibling ops fused into this one: (scope, argument name -> parameter name, first row, end row)
    members: tuple[tuple[str, dict[str, str], int, int], ...] = ()
    features: int | tuple[int, ...] = -1  # a product by a weight (a token-mixing einsum): the output axis (axes) of its output features
    in_shape: tuple[int, ...] = ()  # the first input's shape: which axes a ``dim`` names
    # an attention's query axes in the fused call's order (batch and heads, tokens, head size): an einsum
    # reads ``(B, N, H, D)`` where the fused call reads ``(B, H, N, D)``; None where the query is laid out so
    query_axes: tuple[int, ...] | None = None
    equation: str | None = None  # an einsum's subscripts, for a product kept as written
    # per-group convs made one grouped conv with the join after them: the group each joined operand holds
    joined: tuple[int, ...] = ()
    # the call as made, its one activation input left open (:data:`_OPEN`): the reference's op is run
    # again on what the candidate's hand-written version of it received
    call: tuple[Callable, tuple, dict] | None = None
    # the add ending a batch norm the candidate stores folded (:func:`_stored_folds`): its scale and shift
    folded: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, ...] | None:
        return tuple(self.outputs[0].shape) if self.outputs else None


# composites that run a whole module's computation in one call (nn.MultiheadAttention's projections,
# attention and output projection): the other side writes these ops out, so they are recorded one by one
_OPENED = frozenset({"multi_head_attention_forward"})


def _never(*args: Any) -> bool:
    return False


class OpRecorder(TorchFunctionMode):
    """Records every torch function called while active (see module docstring).

    ``module``: its parameters and buffers are named when passed to an op; forward hooks on its
    submodules tell which one runs each op (removed on exit).
    """

    def __init__(self, module: nn.Module | None = None) -> None:
        super().__init__()
        self.ops: list[Op] = []
        self._alive: list[Any] = []  # originals kept alive: ids stay unique during the run
        self._provenance: dict[int, str] = {}
        self._roots: dict[int, torch.Tensor] = {}  # id of a parameter or a view of it -> the parameter
        self._producers: dict[int, list[int]] = {}  # tensor id -> indices of the ops writing it
        self._scope: list[str] = []
        self._handles: list[Any] = []
        self._module = module
        self._buffers: set[int] = set()  # ids of the module's buffers, which an op may update in place
        self.given: dict[int, torch.Tensor] = {}  # the module's own tensor inputs, which no op produced
        # (working dtype, native dtype) of a copy run at another dtype than the comparison's: a
        # cast from the working dtype to the native one changed nothing in the comparison
        self.recast: tuple[torch.dtype, torch.dtype] | None = None
        self.hooked: set[str] = set()  # submodules whose calls are seen
        self.called: set[str] = set()  # of those, the ones called in the run
        if module is not None:
            for name, t in (*module.named_parameters(), *module.named_buffers()):
                self._provenance[id(t)] = name
                self._roots[id(t)] = t
            self._buffers = {id(t) for _, t in module.named_buffers()}

    def __enter__(self):
        if self._module is not None:
            for name, sub in hookable_modules(self._module):
                if name:
                    self.hooked.add(name)
                    self._handles.append(sub.register_forward_pre_hook(self._push(name)))
                    self._handles.append(sub.register_forward_hook(self._pop))
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return super().__exit__(*exc)

    def _push(self, name: str):
        def hook(module, args):
            self._scope.append(name)
            self.called.add(name)
        return hook

    def _pop(self, module, args, output):
        if self._scope:
            self._scope.pop()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in _OPENED and getattr(func, "__code__", None) is not None:
            return self._open(func, args, kwargs)
        # buffers as the op reads them: a BatchNorm in train mode updates its statistics in place
        # while it runs (parameters are not written by a forward, so they are kept by reference)
        before = {id(t): t.detach().clone() for t in (*args, *kwargs.values())
                  if isinstance(t, torch.Tensor) and id(t) in self._buffers} if self._buffers else {}
        out = func(*args, **kwargs)
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if self.recast is not None and first is not None and isinstance(out, torch.Tensor) \
                and canonical_name(func) in _CASTS and (first.dtype, out.dtype) == self.recast:
            # ``x.to(torch.float32)`` in a float32 model run at float64 here: where the models were
            # compared it cast nothing, so here it casts nothing either (no finding, no float32 error)
            return first
        self._record(func, args, kwargs, out, before)
        return out

    def _open(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """Run a composite's own body with the recorder on, so that its ops are seen one by one. Its
        body first hands itself back to the recorder (``has_torch_function``): a copy of it that
        sees no such check does the work, or the call would come back here without end."""
        body = types.FunctionType(func.__code__, {**func.__globals__, "has_torch_function": _never},
                                  func.__name__, func.__defaults__, func.__closure__)
        body.__kwdefaults__ = func.__kwdefaults__
        torch.overrides._push_mode(self)
        try:
            return body(*args, **kwargs)
        finally:
            torch.overrides._pop_mode()

    def _record(self, func: Callable, args: tuple, kwargs: dict, out: Any, before: dict[int, torch.Tensor]) -> None:
        outs = [t for t in flatten_tensors(out).values()]
        if not outs:  # shape, dim(), item(): no tensor comes out, nothing to compare
            return
        call = func, args, kwargs  # as made, before the spellings below rewrite the arguments
        if any(id(t) in self._roots and self._roots[id(t)] is t for t in outs):
            return  # an update of the module's own state (num_batches_tracked += 1), not computation
        name = canonical_name(func)
        if getattr(func, "__name__", None) in _REFLECTED and len(args) >= 2:
            args = (args[1], args[0], *args[2:])
        if name in _WRITTEN_OUT and len(args) == 3 and set(kwargs) <= {"value"} \
                and isinstance(kwargs.get("value", 1), (int, float)):
            return self._record_written_out(name, args, kwargs.get("value", 1), out, before)
        if name == "baddbmm" and len(args) == 3 and set(kwargs) <= {"beta", "alpha"} \
                and all(_number(v) for v in kwargs.values()):
            return self._record_baddbmm(args, kwargs.get("beta", 1), kwargs.get("alpha", 1), out, before)
        if name == "addmm" and len(args) >= 3:  # torch.addmm(bias, x, weight.t()): a linear layer
            name, args, kwargs = "linear", (args[1], args[2], args[0]), {}
        if name in _GLOBAL_POOLS:
            name, args, kwargs = _global_mean(name, args, kwargs)
        features = -1  # the output axis a product by a weight writes its output features on
        equation = None
        if name == "einsum":
            operands = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
            # a product of two operands is a (batched) matmul in another spelling: attention
            # written with einsum folds like attention written with @, a linear like x @ W
            if len(operands) == 2:
                equation = args[0] if isinstance(args[0], str) else None
                name, (args, features), kwargs = "matmul", self._einsum_product(args[0], operands), {}
            else:
                name, args, kwargs = "einsum", (), {}
        bound = _bind(func, name, args, kwargs) if name != "einsum" else {"operands": operands}
        if name.startswith("conv") and isinstance(bound.get("padding"), str):
            bound["padding"] = _padding_numbers(bound)
        tensors = {k: v for k, v in bound.items() if isinstance(v, torch.Tensor)}
        tensor_lists = {k: v for k, v in bound.items() if isinstance(v, (list, tuple))
                        and v and all(isinstance(t, torch.Tensor) for t in v)}
        params = {k: self._provenance[id(v)] for k, v in tensors.items() if id(v) in self._provenance}
        # ``x.unfold(dim, size, step)`` is a view (windows cut along a dim); ``F.unfold``, im2col,
        # computes the patches a linear then reads as a conv
        kind = "layout" if name in LAYOUT or name == "unfold" and func is torch.Tensor.unfold else "compute"
        first = next(iter(tensors.values()), None)
        if first is None and tensor_lists:
            first = next(iter(tensor_lists.values()))[0]
        if name in _CASTS:
            kind = "noop" if first is not None and outs[0].dtype == first.dtype else "compute"
            name = "cast" if kind == "compute" else name
        if name in ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout") \
                and (not bound.get("training", True) or not bound.get("p", 0.5)):
            kind = "noop"
        if name in ("pad", "constant_pad_nd") and first is not None and outs[0].shape == first.shape:
            kind = "noop"  # a pad of zero width: written for shapes that need none
        if name in _RESIZES and first is not None and outs[0].shape == first.shape and torch.equal(outs[0], first):
            kind = "noop"  # a table resized to the size it has: written for sizes that need a resize
        if name == "embedding" and all(id(t) in self._provenance for t in tensors.values()):
            # a lookup at fixed indices (position ids held as a buffer) is a view of its table: an
            # ``add`` of it is an add of the table, compared with the reference's position parameter
            kind, first = "layout", bound["weight"]
        if self._constant_from(name, [*tensors.values(), *(t for v in tensor_lists.values() for t in v)]) \
                and self._constant_from(name, list(flatten_tensors((args, kwargs)).values())):
            # computed from no input and no parameter (offsets from arange and meshgrid, stacked): a
            # constant operand, its own store, compared by value where read, as the reference's buffer is
            for t in outs:
                self._provenance[id(t)], self._roots[id(t)] = _CONSTANT.format(name), t
            self._alive.append(out)
            return
        if kind != "compute" and first is not None and id(first) in self._provenance and all(
                id(t) in self._provenance for v in tensor_lists.values() for t in v):
            # a view of a parameter is that parameter; not so a cat of it with activations (a cls token)
            for t in outs:
                self._provenance[id(t)] = self._provenance[id(first)]
                self._roots[id(t)] = self._roots[id(first)]
            self._alive.append(out)
            return
        inputs = [id(v) for k, v in tensors.items() if k not in params]
        inputs += [id(t) for v in tensor_lists.values() for t in v]
        op = Op(
            index=len(self.ops), name=name, spelling=_spelling(func),
            args=_normalize(name, {k: v for k, v in bound.items() if k not in tensors and k not in tensor_lists},
                            first, outs),
            # copies: a BatchNorm in train mode updates its statistics in place after the op
            params=params, param_values={k: self._value_before(self._roots[id(tensors[k])], before) for k in params},
            operands={k: self._value_before(tensors[k], before) for k in params},
            named_inputs={k: id(v) for k, v in tensors.items() if k not in params},
            input_ids=inputs, out_ids=[id(t) for t in outs], outputs=[t.detach().clone() for t in outs],
            scope=self._scope[-1] if self._scope else "", kind=kind, features=features,
            in_shape=tuple(first.shape) if first is not None else (),
            call=_opened(*call, inputs[0]) if len(set(inputs)) == 1 and not tensor_lists else None,
            equation=equation if len(inputs) == 2 else None,
        )
        self._alive.append(out)
        for i in op.out_ids:
            self._producers.setdefault(i, []).append(op.index)
        self.ops.append(op)

    def _constant_from(self, name: str, tensors: list[torch.Tensor]) -> bool:
        """Whether an op reading ``tensors`` computes a constant: each one is (none for a factory such
        as ``arange``); a random draw is none."""
        if name in _SHAPE_ONLY:
            return True  # ``zeros_like(v_bias)`` reads its operand's shape, never its values
        return not name.startswith(_RANDOM) and all(_is_constant(self._provenance.get(id(t), "")) for t in tensors)


    def _record_written_out(self, name: str, args: tuple, value: float, out: Any, before: dict[int, torch.Tensor]) -> None:
        """``addcmul(x, a, b, value=v)`` (``addcdiv``) recorded as the ops a port writes for it:
        ``a * b`` (``a / b``), times ``v`` unless 1, then ``x + ...``. The two sides' ops then pair
        one by one: a bias added in the wrong place, or a residual missing after it, is named."""
        x, a, b = args
        product_op = _WRITTEN_OUT[name]
        product = product_op(a, b)
        self._record(product_op, (a, b), {}, product, before)
        if value != 1:
            scaled = product * value
            self._record(torch.mul, (product, value), {}, scaled, before)
            product = scaled
        self._record(torch.add, (x, product), {}, out, before)

    def _record_baddbmm(self, args: tuple, beta: float, alpha: float, out: Any,
                        before: dict[int, torch.Tensor]) -> None:
        """``baddbmm(x, a, b, beta=, alpha=)`` recorded as the ops a port writes for it: ``a @ b``,
        times ``alpha`` unless 1, then ``... + beta * x`` unless ``beta`` is 0 (``x`` is not read
        then). Attention scores scaled in the product's call (``alpha=scale``) then fold as
        ``(q @ k^T) * scale`` does, and their scale is compared."""
        x, a, b = args
        product = torch.matmul(a, b)
        last = beta == 0 and alpha == 1
        self._record(torch.matmul, (a, b), {}, out if last else product, before)
        if alpha != 1:
            scaled = out if beta == 0 else product * alpha
            self._record(torch.mul, (product, alpha), {}, scaled, before)
            product = scaled
        if beta != 0:
            if beta != 1:
                weighted = x * beta
                self._record(torch.mul, (x, beta), {}, weighted, before)
                x = weighted
            self._record(torch.add, (product, x), {}, out, before)  # the scores first: a mask added to them

    def _einsum_product(self, equation: Any, operands: list) -> tuple[tuple, int]:
        """An einsum's two operands as ``x @ W``, and the output axis (or axes) of its features: a weight
        contracted with ``x``'s dims (``'bnc,oc->bno'``, ``'bhnd,hdc->bnc'``) comes second, as an ``(in, out)`` matrix,
        so that it folds into a linear as ``x @ W`` does; any other product keeps its operands as written."""
        found = _einsum_linear(equation, operands, self._provenance)
        if found is None:
            return tuple(operands), -1
        x, weight, order, n_in, features = found
        if order != [0, 1]:  # as an (in, out) matrix; a view of the parameter is that parameter
            view = weight.permute(order).reshape(math.prod(weight.shape[d] for d in order[:n_in]), -1)
            self._provenance[id(view)], self._roots[id(view)] = self._provenance[id(weight)], self._roots[id(weight)]
            self._alive.append(view)
            weight = view
        return (x, weight), features

    @staticmethod
    def _value_before(t: torch.Tensor, before: dict[int, torch.Tensor]) -> torch.Tensor:
        """``t`` as the op read it: the copy of a buffer taken before the op ran, else ``t`` itself."""
        return before[id(t)] if id(t) in before else t.detach()

    def producer(self, tensor_id: int, before: int | None = None) -> Op | None:
        """The last op that wrote ``tensor_id`` before op index ``before`` (in-place ops write their input)."""
        found = [i for i in self._producers.get(tensor_id, ()) if before is None or i < before]
        return self.ops[found[-1]] if found else None

    def value(self, tensor_id: int, before: int | None = None) -> torch.Tensor | None:
        op = self.producer(tensor_id, before)
        return None if op is None else op.outputs[op.out_ids.index(tensor_id)]

    def passed(self, tensor_id: int, before: int | None = None) -> torch.Tensor | None:
        """:meth:`value`, or the module's own input of that id."""
        found = self.value(tensor_id, before)
        return found if found is not None else self.given.get(tensor_id)


_CONSTANT = "a constant from {}"  # the name of a tensor computed from no input and no parameter, after its op
_CONSTANT_PREFIX = _CONSTANT.split("{", 1)[0]
# ops whose result depends on their operands' shape and dtype only
_SHAPE_ONLY = frozenset({"zeros_like", "ones_like", "full_like", "empty_like", "new_zeros", "new_ones", "new_full",
                         "new_empty"})
_RESIZES = frozenset({"interpolate", "upsample", "upsample_bilinear", "upsample_nearest"})
_RANDOM = ("rand", "normal", "bernoulli", "multinomial", "poisson", "dropout", "uniform", "exponential", "geometric",
           "cauchy", "log_normal")  # draws: no constant


def _is_constant(name: str) -> bool:
    """Whether an operand's name is that of a constant the forward computes (no parameter's name)."""
    return name.startswith(_CONSTANT_PREFIX)


_OPEN = torch.empty(0)  # the place of a recorded call's activation input (a tensor: map_tensors visits it)


def _opened(func: Callable, args: tuple, kwargs: dict, input_id: int) -> tuple[Callable, tuple, dict]:
    """The call with its activation input left open; the parameters it passed are kept by reference
    (a forward does not write them)."""
    def open_input(t: torch.Tensor) -> torch.Tensor:
        return _OPEN if id(t) == input_id else t
    return func, map_tensors(args, open_input), map_tensors(kwargs, open_input)


def _rerun(op: Op, x: torch.Tensor) -> torch.Tensor | None:
    """``op``'s call made again on ``x`` in the place of its input, on copies (an in-place op or a batch
    norm in training writes nothing recorded); None where it cannot be."""
    if op.call is None:
        return None

    def fill(t: torch.Tensor) -> torch.Tensor:
        return (x if t is _OPEN else t).detach().clone()
    func, args, kwargs = op.call
    try:
        with torch.no_grad():
            out = func(*map_tensors(args, fill), **map_tensors(kwargs, fill))
    except Exception:  # arguments of another dtype or device: no re-run, the recorded result is compared
        return None
    return next(iter(flatten_tensors(out).values()), None)


def _einsum_linear(equation: Any, operands: list, parameters: dict[int, str]) -> tuple | None:
    """``(x, W, order, n_in, features)`` for an einsum that is a linear layer: one operand a parameter
    whose subscripts each contract one of ``x``'s or are written in their place, the other subscripts
    of ``x`` kept, in any order (``'bnc,oc->bno'``; a token-mixing ``'bnc,nh->bhc'``, which is
    ``nn.Linear`` on the transposed tokens; a fused q/k/v kernel ``'bnc,shdc->sbhnd'``, a head-merging
    output projection ``'bhnd,hdc->bnc'``). ``order``: W's dims as (contracted in ``x``'s order, produced
    in the output's), the first ``n_in`` the input features; ``features``: the output axis (negative)
    that holds the output features, or their axes where they are several."""
    if not isinstance(equation, str) or "->" not in equation:
        return None
    inputs, out = equation.replace(" ", "").split("->")
    subs = inputs.split(",")
    if len(subs) != 2:
        return None
    for w_pos in (0, 1):
        weight, x, w_sub, x_sub = operands[w_pos], operands[1 - w_pos], subs[w_pos], subs[1 - w_pos]
        letters = x_sub.replace("...", "")
        if id(weight) not in parameters or weight.ndim != len(w_sub) or len(set(w_sub)) != len(w_sub) \
                or len(set(letters)) != len(letters):
            continue
        contracted, produced = [s for s in letters if s in w_sub], [s for s in out if s in w_sub]
        kept = [s for s in letters if s not in w_sub]
        if not contracted or not produced or len(contracted) + len(produced) != len(w_sub) \
                or set(contracted) & set(out) or sorted(out.replace("...", "")) != sorted(kept + produced) \
                or "..." in out[out.index(produced[0]):]:
            continue
        features = tuple(out.index(s) - len(out) for s in produced)
        order = [w_sub.index(s) for s in contracted + produced]
        return x, weight, order, len(contracted), features[0] if len(features) == 1 else features
    return None


_GLOBAL_POOLS = {"adaptive_avg_pool1d": 1, "adaptive_avg_pool2d": 2, "adaptive_avg_pool3d": 3}


def _global_mean(name: str, args: tuple, kwargs: dict) -> tuple[str, tuple, dict]:
    """An adaptive average pool to size 1 is the mean over its spatial dims, kept: one operation
    that ports spell either way (``x.mean((2, 3), keepdim=True)``); any other size stays a pool."""
    x = args[0] if args else kwargs.get("input")
    size = args[1] if len(args) > 1 else kwargs.get("output_size")
    sizes = size if isinstance(size, (tuple, list, torch.Size)) else (size,)
    if not isinstance(x, torch.Tensor) or not all(s == 1 for s in sizes):
        return name, args, kwargs
    spatial = _GLOBAL_POOLS[name]
    return "mean", (x, tuple(range(x.ndim - spatial, x.ndim)), True), {}


def _spelling(func: Callable) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


def _bind(func: Callable, name: str, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Arguments by parameter name, defaults filled in where the signature is known."""
    if name in _SIGNATURES:
        sig = _SIGNATURES[name]
        out = {}
        for i, (pname, default) in enumerate(sig):
            if i < len(args):
                out[pname] = args[i]
            elif pname in kwargs:
                out[pname] = kwargs[pname]
            elif default is not _NO_DEFAULT:
                out[pname] = default
        for i in range(len(sig), len(args)):
            out[f"arg{i}"] = args[i]
        out.update({k: v for k, v in kwargs.items() if k not in out})
        if name in _COMMUTATIVE:  # 2 * x and x * 2 alike: the tensor is the input
            a, b = out.get("input"), out.get("other")
            if not isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
                out["input"], out["other"] = b, a
        return out
    try:
        bound = inspect.signature(func).bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)
    except (TypeError, ValueError):
        out = {f"arg{i}": a for i, a in enumerate(args)}
        out.update(kwargs)
        return out


def _normalize(name: str, args: dict[str, Any], first: torch.Tensor | None, outs: list[torch.Tensor]) -> dict:
    """Comparable argument values: dims non-negative, spatial ints as tuples, shapes as output shape."""
    ndim = first.ndim if first is not None else None
    out: dict[str, Any] = {}
    for k, v in args.items():
        if k in ("out", "memory_format", "non_blocking", "copy"):
            continue
        v = _plain(v)
        if k in _DIM_ARGS and ndim:
            v = _nonneg(v, ndim if name not in ("unsqueeze", "stack") else ndim + 1)
        if k in _SPATIAL_ARGS and isinstance(v, int) and name.startswith(_WINDOWED) and outs:
            v = (v,) * (outs[0].ndim - 2)
        out[k] = v
    if isinstance(out.get("dim0"), int) and isinstance(out.get("dim1"), int):
        # the two axes a transpose exchanges are one pair in either order: ``(-1, -2)`` is ``(2, 3)``
        out["dim0"], out["dim1"] = sorted((out["dim0"], out["dim1"]))
    if name.startswith(("avg_pool", "max_pool")) and out.get("stride") in (None, ()):
        out["stride"] = out.get("kernel_size")  # a pool's stride defaults to its window
    if name in _SEQUENCE_ARGUMENTS:
        out = _one_sequence(name, out, ndim)
    if name == "reshape":
        out = {"shape": tuple(outs[0].shape)}  # -1 or explicit, view or reshape: the shape made
    if name == "index":  # x[..., 0::2, :] as written (Tensor.__getitem__ binds it as ``key``)
        out = {"index": _index_text(args.get("key", args.get("arg1")))}
    if name == "batch_norm":
        out["divides_by"] = "sqrt(var + eps)"  # what a batch norm written out may divide by otherwise
    return out


def _padding_numbers(bound: dict[str, Any]) -> Any:
    """A conv's ``padding="same"``/``"valid"`` as the numbers it pads by, where they are symmetric
    (an odd kernel): what a port writing them out passes."""
    weight, padding = bound.get("weight"), bound["padding"]
    if padding == "valid":
        return 0
    if padding != "same" or not isinstance(weight, torch.Tensor):
        return padding
    kernel = weight.shape[2:]
    dilation = bound.get("dilation", 1)
    dilation = (dilation,) * len(kernel) if isinstance(dilation, int) else tuple(dilation)
    totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
    return tuple(t // 2 for t in totals) if all(t % 2 == 0 for t in totals) else padding


def _index_text(key: Any) -> str:
    """An index as Python writes it: ``[..., 0::2, 1::2, :]``."""
    def one(k: Any) -> str:
        if k is Ellipsis:
            return "..."
        if isinstance(k, slice):
            text = ("" if k.start is None else str(k.start)) + ":" + ("" if k.stop is None else str(k.stop))
            return text + ("" if k.step is None else f":{k.step}")
        if isinstance(k, torch.Tensor):
            return f"<{_DTYPE_WORDS.get(k.dtype, 'tensor')} {tuple(k.shape)}>"
        return repr(k)
    return "[" + ", ".join(one(k) for k in (key if isinstance(key, tuple) else (key,))) + "]"


_DTYPE_WORDS = {torch.bool: "mask", torch.int64: "indices", torch.int32: "indices"}


# ops taking their sizes or dims one by one or as one sequence: the argument that holds them
_SEQUENCE_ARGUMENTS = {"permute": "dims", "flip": "dims", "repeat": "repeats", "tile": "dims", "expand": "size"}


def _one_sequence(name: str, args: dict[str, Any], ndim: int | None) -> dict[str, Any]:
    """``x.permute(0, 2, 3, 1)``, ``x.permute((0, 2, 3, 1))`` and ``torch.permute(x, [0, 2, 3, 1])``
    alike: the sizes or dims as one tuple under one name (dims non-negative), the input kept."""
    key = _SEQUENCE_ARGUMENTS[name]
    given = [args[k] for k in args if k == key or k.startswith("arg") and k != "arg0"]
    values = tuple(given[0]) if len(given) == 1 and isinstance(given[0], tuple) else tuple(given)
    if key == "dims" and ndim and all(isinstance(d, int) for d in values):
        values = tuple(d % ndim for d in values)
    return {**{k: v for k, v in args.items() if k == "arg0" or not (k == key or k.startswith("arg"))}, key: values}


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Size):
        return tuple(v)
    if isinstance(v, list):
        return tuple(_plain(x) for x in v)
    if isinstance(v, tuple):
        return tuple(_plain(x) for x in v)
    if isinstance(v, torch.dtype):
        return str(v).removeprefix("torch.")
    if isinstance(v, torch.Tensor):
        return f"tensor{tuple(v.shape)}"
    return v


def _nonneg(v: Any, ndim: int) -> Any:
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return v % ndim if ndim else v
    if isinstance(v, tuple):
        return tuple(_nonneg(x, ndim) for x in v)
    return v


# -- composite attention -----------------------------------------------------------------------
def _scalar(op: Op) -> float | None:
    """The scalar factor of ``x * s`` / ``x / s`` (None for any other op)."""
    other = op.args.get("other")
    if op.name in ("mul", "div") and isinstance(other, (int, float)) and not isinstance(other, bool) \
            and len(op.input_ids) == 1:
        return float(other) if op.name == "mul" else 1.0 / float(other)
    return None


_MASKS = 3  # additive masks followed back from the softmax to the product (a bias, a window mask...)


def _walk_back(rec: OpRecorder, tensor_id: int, factors: list[float], path: list[Op], *, mask: list | None,
               before: int) -> Op | None:
    """Follow ``tensor_id`` back through layout ops, casts, scalar scalings and a mask (added or filled in)."""
    while True:
        op = rec.producer(tensor_id, before)
        if op is None:
            return None
        before = op.index  # strictly backwards: an in-place op reads and writes one tensor
        s = _scalar(op)
        if op.kind in ("layout", "noop") or op.name == "cast" or s is not None:
            if s is not None:
                factors.append(s)
                path.append(op)
            elif op.name == "cast":
                path.append(op)
            if not op.input_ids:
                return None
            tensor_id = op.input_ids[0]
            continue
        if op.name in ("add", "masked_fill") and mask is not None and len(mask) < _MASKS \
                and len(op.input_ids) + len(op.params) == 2:
            mask.append(op)  # a bias and a window mask may be added one after the other
            path.append(op)
            tensor_id = op.input_ids[0]
            continue
        return op


def _fold_attention(rec: OpRecorder) -> list[Op]:
    """Replace written-out ``softmax(q k^T * s) v`` by one ``scaled_dot_product_attention``."""
    ops = rec.ops
    consumers: dict[int, list[Op]] = {}
    for op in ops:
        for i in op.input_ids:
            consumers.setdefault(i, []).append(op)
    composites: dict[int, Op] = {}
    for s in ops:
        if s.kind != "compute" or not s.input_ids:
            continue
        written: list[Op] = []  # the ops of a softmax written out
        if s.name != "softmax":
            found = _written_softmax(rec, s)
            if found is None:
                continue
            s, written = found
        factors: list[float] = []
        path: list[Op] = []
        mask: list[Op] = []
        m1 = _walk_back(rec, s.input_ids[0], factors, path, mask=mask, before=s.index)
        if m1 is None or m1.name != "matmul" or len(m1.input_ids) != 2:
            continue
        after = math.prod(factors)  # the scalings between the product and the softmax
        for tid in m1.input_ids:  # q and k: scalings applied before the product count too
            _walk_back(rec, tid, factors, path, mask=None, before=m1.index)
        m2 = _consumer_matmul(rec, s, consumers)
        if m2 is None:
            continue
        scale = math.prod(factors) if factors else 1.0
        added = _added_mask(rec, s, m1, after) if mask else None
        if _masks_nothing(added, after * m1.outputs[0] if m1.outputs else None):  # every key kept (an all-ones padding mask): no mask, its ops with it
            _absorb_read_only_by(rec, [t for m in mask for t in m.input_ids[1:]], mask)
            mask, added = [], None
        args = {"scale": scale, "dim": _scores_dim(s), "dtype": s.args.get("dtype"),
                "attn_mask": bool(mask), "is_causal": False}
        composites[m2.index] = Op(
            index=m2.index, name="scaled_dot_product_attention", spelling="softmax(q @ k^T * scale) @ v",
            args=args, params={}, param_values={}, out_ids=m2.out_ids,
            input_ids=[*(_attention_operand(rec, i, m1.index) for i in m1.input_ids), *m2.input_ids[1:]],
            outputs=m2.outputs, scope=m2.scope, mask=added,
            mask_params=tuple(dict.fromkeys(n for m in mask for n in m.params.values())),
            query_axes=_query_axes(m1.equation))
        for m in mask:  # a bias built from its table by ops of its own is that mask too
            composites[m2.index].mask_params += _absorb_built(rec, m.input_ids[1:], m.index,
                                                              composites[m2.index].mask_params)
        for op in (m1, s, m2, *path, *written):
            op.absorbed = True
    stream = []
    for op in ops:
        if op.index in composites:
            stream.append(composites[op.index])
        elif op.kind == "compute" and not op.absorbed:
            stream.append(_canonical_sdpa(op) if op.name == "scaled_dot_product_attention" else op)
    return stream


def _masks_nothing(added: torch.Tensor | None, scores: torch.Tensor | None = None) -> bool:
    """Whether what a mask adds to the scores is zero everywhere (but for the rounding of ``scores``,
    from which a written-out one is read back): it masks no key and biases none, so the attention
    computes what one given no mask does."""
    if added is None or not added.numel() or not added.is_floating_point() or not bool(added.isfinite().all()):
        return False
    size = float(scores.abs().max()) if scores is not None and scores.numel() else 0.0
    return float(added.abs().max()) <= 64 * torch.finfo(added.dtype).eps * size


_MASK_BUILDERS = 8  # ops computing a mask (an inversion, a cast), at most, followed back


def _absorb_read_only_by(rec: OpRecorder, tensor_ids: list[int], readers: list[Op]) -> None:
    """The ops computing ``tensor_ids`` absorbed, back for as long as what each computes is read by
    absorbed ops alone (an inverted padding mask read by its ``masked_fill``): they compute a mask
    that changes nothing, no operation of the model's."""
    absorbed = {op.index for op in readers}
    todo = [(tid, min(absorbed)) for tid in tensor_ids]
    while todo and len(absorbed) < len(readers) + _MASK_BUILDERS:
        tid, before = todo.pop()
        op = rec.producer(tid, before)
        if op is None or op.index in absorbed or any(
                any(t in r.input_ids for t in op.out_ids) and r.index not in absorbed for r in rec.ops[op.index + 1:]):
            continue
        op.absorbed = True
        absorbed.add(op.index)
        todo += [(t, op.index) for t in op.input_ids]


def _query_axes(equation: str | None) -> tuple[int, ...] | None:
    """The query's axes of an einsum's scores (``'bnhd,bmhd->bhnm'``) in the order a fused attention
    reads them: the batch and head axes as the scores hold them, the tokens (the scores' queries), the
    one contracted axis (the head size). None where the einsum reads the query so already, or where
    its subscripts say no such order (an ellipsis, several contracted axes)."""
    if not equation or "..." in equation or "->" not in equation:
        return None
    inputs, out = equation.replace(" ", "").split("->")
    parts = inputs.split(",")
    if len(parts) != 2 or len(out) < 2:
        return None
    q, k = parts
    contracted = [s for s in q if s in k and s not in out]
    if len(contracted) != 1 or out[-2] not in q or out[-1] in q or len(set(q)) != len(q):
        return None
    axes = tuple(q.index(s) for s in out[:-2] if s in q) + (q.index(out[-2]), q.index(contracted[0]))
    if sorted(axes) != list(range(len(q))):
        return None
    return None if axes == tuple(range(len(q))) else axes


def _written_softmax(rec: OpRecorder, div: Op) -> tuple[Op, list[Op]] | None:
    """``e / e.sum(d, keepdim=True)`` with ``e = exp(x - x.amax(d, keepdim=True))`` (the max
    optional, over the same dim) over the last dim: the softmax it writes out, as one op reading
    ``x``, and its ops. A sum or a max over another dim computes something else, or another
    softmax than an attention's over its keys, and is left as it is written."""
    if div.name != "div" or len(div.input_ids) != 2:
        return None
    e_id, total_id = div.input_ids
    exp, total = rec.producer(e_id, div.index), rec.producer(total_id, div.index)
    if exp is None or total is None or exp.name != "exp" or total.name != "sum" or total.input_ids != [e_id] \
            or not total.args.get("keepdim") or not exp.input_ids:
        return None
    dim = _one_dim(total)
    if dim is None or dim != len(total.in_shape) - 1:
        return None  # over the keys only: one over another dim is said as the written-out run it is
    parts, x_id = [exp, total, div], exp.input_ids[0]
    sub = rec.producer(x_id, exp.index)
    if sub is not None and sub.name == "sub" and len(sub.input_ids) == 2:
        peak = rec.producer(sub.input_ids[1], sub.index)
        if peak is not None and peak.name in ("amax", "max") and peak.input_ids == sub.input_ids[:1] \
                and _one_dim(peak) == dim:
            parts, x_id = [peak, sub, *parts], sub.input_ids[0]
    softmax = Op(index=div.index, name="softmax", spelling="exp(x - max) / sum", args={"dim": dim, "dtype": None},
                 params={}, param_values={}, input_ids=[x_id], out_ids=div.out_ids, outputs=div.outputs,
                 scope=div.scope, in_shape=div.in_shape)
    return softmax, parts


def _fold_softmax(rec: OpRecorder, stream: list[Op]) -> list[Op]:
    """A softmax written out where no attention absorbs it (scores mixed with others before the
    product with the values, as a gated attention mixes content and position scores) made one
    ``softmax``, as an attention's own is: :func:`_written_softmax`."""
    out: list[Op] = []
    for op in stream:
        found = _written_softmax(rec, op) if op.name == "div" else None
        if found is None or not all(any(o is part for o in out) for part in found[1][:-1]):
            out.append(op)
            continue
        out = [o for o in out if all(o is not part for part in found[1])]
        out.append(found[0])
    return out


def _one_dim(reduction: Op) -> int | None:
    """The one dim a reduction runs over, counted from the front (None for several or all)."""
    dim = reduction.args.get("dim", reduction.args.get("arg1"))
    if isinstance(dim, (tuple, list)) and len(dim) == 1:
        dim = dim[0]
    if not isinstance(dim, int) or isinstance(dim, bool) or not reduction.in_shape:
        return None
    return dim % len(reduction.in_shape)


def _attention_operand(rec: OpRecorder, tensor_id: int, before: int) -> int:
    """The query or key a written-out product reads, as a fused call takes it: before its scaling
    and the transpose of its last two dims (``k.transpose(-2, -1)``), so that operands passed in
    another order are seen as such."""
    while (op := rec.producer(tensor_id, before)) is not None and op.input_ids and (
            _scalar(op) is not None or op.name == "cast" or _transposes_last(op)):
        tensor_id, before = op.input_ids[0], op.index
    return tensor_id


def _transposes_last(op: Op) -> bool:
    last = op.outputs[0].ndim - 1 if op.outputs else -1
    return op.name == "transpose" and {op.args.get("dim0"), op.args.get("dim1")} == {last - 1, last}


_SCORES_NDIM = 4  # attention scores as the fused call lays them out: (batch, heads, queries, keys)


def _scores_dim(softmax: Op) -> Any:
    """The softmax's dim counted as in the fused call's scores: a written-out attention may fold
    batch and heads into one axis (nn.MultiheadAttention's (batch * heads, queries, keys))."""
    dim, ndim = softmax.args.get("dim"), softmax.outputs[0].ndim if softmax.outputs else _SCORES_NDIM
    return dim + _SCORES_NDIM - ndim if isinstance(dim, int) and not isinstance(dim, bool) else dim


def _added_mask(rec: OpRecorder, softmax: Op, product: Op, after: float) -> torch.Tensor | None:
    """Everything added to the scaled scores before the softmax, however many masks and views:
    what the fused attention receives as ``attn_mask``."""
    scores = rec.value(softmax.input_ids[0], softmax.index)
    raw = product.outputs[0] if product.outputs else None
    if scores is None or raw is None or scores.numel() != raw.numel():
        return None
    return scores.reshape(raw.shape) - after * raw


def _passed_mask(rec: OpRecorder, op: Op) -> torch.Tensor | None:
    """The ``attn_mask`` a fused attention receives, boolean masks as the additive ones they stand for."""
    if "attn_mask" in op.params:
        mask = op.operands["attn_mask"]
    elif "attn_mask" in op.named_inputs:
        mask = rec.passed(op.named_inputs["attn_mask"], op.index)
    else:
        return None
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=op.outputs[0].dtype).masked_fill(~mask, float("-inf"))
    return mask


def _consumer_matmul(rec: OpRecorder, s: Op, consumers: dict[int, list[Op]]) -> Op | None:
    frontier = list(s.out_ids)
    for _ in range(6):  # through a dropout, a cast or a reshape
        nxt = []
        for tid in frontier:
            for op in consumers.get(tid, []):
                if op.index <= s.index:
                    continue  # an earlier reader of a tensor id that was written again in place
                if op.name == "matmul" and op.input_ids and op.input_ids[0] == tid:
                    return op
                if op.kind in ("layout", "noop") or op.name in ("cast", "dropout"):
                    nxt.extend(op.out_ids)
        frontier = nxt
    return None


def _canonical_sdpa(op: Op) -> Op:
    args = dict(op.args)
    q_dim = op.args.get("_q_last")
    if args.get("scale") is None and q_dim:
        args["scale"] = 1.0 / math.sqrt(q_dim)
    args.pop("_q_last", None)
    args["attn_mask"] = args.get("attn_mask") not in (None, False)
    args["dim"] = _SCORES_NDIM - 1  # over the keys
    args.setdefault("dtype", None)
    keep = {k: args[k] for k in ("scale", "dim", "dtype", "attn_mask", "is_causal") if k in args}
    if args.get("dropout_p"):
        keep["dropout_p"] = args["dropout_p"]
    return replace(op, args=keep)


# -- running -----------------------------------------------------------------------------------
def record_ops(module: nn.Module, args: tuple, kwargs: dict,
               recast: tuple[torch.dtype, torch.dtype] | None = None) -> tuple[OpRecorder, list[Op], Any]:
    """Run ``module(*args, **kwargs)`` under an :class:`OpRecorder`; (recorder, op stream, output).
    ``recast``: (working dtype, the module's own dtype) of a copy cast to run at another dtype."""
    rec = OpRecorder(module)
    rec.recast = recast
    rec.given = {id(t): t for t in flatten_tensors((args, kwargs)).values()}
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same dropout masks on both sides, global RNG left as it was
        with rec:
            out = module(*args, **kwargs)
    for op in rec.ops:  # the fused attention's default scale needs the query's last dimension
        if op.name == "scaled_dot_product_attention" and op.args.get("scale") is None and op.outputs:
            op.args["_q_last"] = _sdpa_head_dim(rec, op)
        if op.name == "scaled_dot_product_attention":
            _take_mask(rec, op)
    stream = _fold_linear(rec, _fold_softmax(rec, _fold_attention(rec)))
    stream = _fold_pool_pad(rec, _fold_pad(rec, _fold_patches(rec, stream)))
    stream = _fold_scalings(rec, _fold_reductions(rec, _fold_batch_norm(rec, stream)))
    return rec, _reaching(rec, stream, out), out


def _reaching(rec: OpRecorder, stream: list[Op], out: Any) -> list[Op]:
    """``stream`` without the ops that only compute a statistic no output reads: a number a forward
    hook or a debug line computes (``o.max()``, ``torch.isfinite(x).all()``) changes nothing the
    module returns, so it is no step of the computation the two sides are compared on. A tensor
    computed and left unread (a shortcut never added) stays: leaving it out is the port's error."""
    returned = {id(t) for t in flatten_tensors(out).values()}
    readers: dict[int, set[int]] = {}
    for op in rec.ops:
        for i in op.input_ids:
            readers.setdefault(i, set()).add(op.index)
    dropped: set[int] = set()
    for op in reversed(rec.ops):
        if op.out_ids and all(i not in returned and (readers.get(i, set()) <= dropped if i in readers
                                                     else t.numel() <= 1)
                              for i, t in zip(op.out_ids, op.outputs)):
            dropped.add(op.index)
    gone = {i for op in rec.ops if op.index in dropped for i in op.out_ids}
    kept = [op for op in stream if not op.out_ids or not set(op.out_ids) <= gone]
    return kept if kept else stream


def _fold_scalings(rec: OpRecorder, stream: list[Op]) -> list[Op]:
    """A chain of scalings by numbers made one ``mul`` by their product: ``x * 2 * pi`` is
    ``x * (2 * pi)``, ``x / 2 * 3`` is ``x * 1.5`` (constants folded otherwise, one computation).
    A single scaling stays as written."""
    out: list[Op] = []
    for op in stream:
        prev = out[-1] if out else None
        s, t = (_scalar(prev), _scalar(op)) if prev is not None else (None, None)
        if s is None or t is None or op.params or prev.params or op.input_ids != prev.out_ids[:1] \
                or not _read_once(rec, prev, op):
            out.append(op)
        else:
            out[-1] = replace(prev, name="mul", args={**prev.args, "other": s * t}, out_ids=op.out_ids,
                              outputs=op.outputs, call=None)
    return out


def _fold_reductions(rec: OpRecorder, stream: list[Op]) -> list[Op]:
    """A mean (sum) of a mean (sum) kept in place, over other dims, made one over both:
    ``x.mean(2, keepdim=True).mean(3, keepdim=True)`` is ``x.mean((2, 3), keepdim=True)``."""
    out: list[Op] = []
    for op in stream:
        dims = _joined_dims(rec, out[-1], op) if out else None
        if dims is None:
            out.append(op)
        else:
            out[-1] = replace(out[-1], args={**out[-1].args, "dim": dims if len(dims) > 1 else dims[0]},
                              out_ids=op.out_ids, outputs=op.outputs, call=None)
    return out


def _joined_dims(rec: OpRecorder, prev: Op, op: Op) -> tuple[int, ...] | None:
    """The dims of ``prev`` and ``op`` together, where ``op`` reduces, keeping dims, what alone
    ``prev`` reduced the same way; None otherwise."""
    if op.name != prev.name or op.name not in ("mean", "sum") or op.params or op.input_ids != prev.out_ids[:1] \
            or not (op.args.get("keepdim") and prev.args.get("keepdim")) or not _read_once(rec, prev, op):
        return None
    first, second = _dim_tuple(prev.args.get("dim")), _dim_tuple(op.args.get("dim"))
    return tuple(sorted(set(first) | set(second))) if first and second else None


def _fold_linear(rec: OpRecorder, stream: list[Op]) -> list[Op]:
    """``x @ W + b`` with ``W`` and ``b`` parameters made one ``linear``, as ``F.linear(x, W^T, b)``
    and ``addmm`` are: a port storing its weights ``(in, out)`` computes what ``nn.Linear`` does.
    The add is folded in only where it alone reads the product. ``t + x @ W + b``, which Python
    adds as ``(t + x @ W) + b``, is the residual sum of that linear: the same numbers."""
    out: list[Op] = []
    for op in stream:
        if out and _adds_bias(op, out[-1]) and op.input_ids == out[-1].out_ids[:1] and _read_once(rec, out[-1], op):
            out[-1] = _with_bias(out[-1], op)
        elif len(out) > 1 and _adds_bias_after_sum(rec, op, out[-2], out[-1]):
            total = replace(out[-1], out_ids=op.out_ids, outputs=op.outputs, call=None)
            out[-2:] = [_with_bias(out[-2], op, summed=False), total]
        else:
            out.append(_as_linear(op) if _weight_product(op) else op)
    return out


def _read_once(rec: OpRecorder, product: Op, add: Op) -> bool:
    """Whether ``add`` alone reads ``product``'s output (after an in-place add, readers of that
    tensor read the sum)."""
    last = add.index if add.out_ids == add.input_ids else len(rec.ops)
    return sum(product.out_ids[0] in op.input_ids for op in rec.ops[product.index + 1:last + 1]) == 1


def _weight_product(op: Op) -> bool:
    """``x @ W`` with ``W`` a matrix parameter (or a view of one)."""
    return op.name == "matmul" and list(op.params) == ["other"] and len(op.input_ids) == 1 \
        and op.operands["other"].ndim == 2


def _as_linear(op: Op) -> Op:
    weight = op.params["other"]
    return replace(op, name="linear", args={"bias": None}, params={"weight": weight},
                   param_values={"weight": op.param_values["other"]}, operands={"weight": op.operands["other"].t()},
                   named_inputs={"input": op.input_ids[0]}, call=None)


def _adds_bias(add: Op, product: Op) -> bool:
    """``add`` puts a parameter vector on the output features of a folded ``x @ W``: on its last
    axis, or broadcast along the one a token-mixing einsum writes them on (``b[None, :, None]``)."""
    if add.name != "add" or product.name != "linear" or "bias" in product.params \
            or len(add.params) != 1 or add.args.get("alpha", 1) != 1 or "weight" not in product.operands:
        return False
    bias, out = next(iter(add.operands.values())), product.outputs[0]
    features = {a % out.ndim for a in (product.features if isinstance(product.features, tuple) else (product.features,))}
    size = product.operands["weight"].shape[0]
    if bias.ndim > out.ndim or bias.numel() != size or math.prod(out.shape[a] for a in features) != size:
        return False
    axes = range(out.ndim - bias.ndim, out.ndim)  # the output axes the bias's dims broadcast against
    return all(n == (out.shape[axis] if axis in features else 1) for axis, n in zip(axes, bias.shape))


def _adds_bias_after_sum(rec: OpRecorder, add: Op, product: Op, total: Op) -> bool:
    """``add`` puts the bias of ``product`` on ``total``, the sum of ``product`` and another value
    (``t + x @ W + b``), which alone reads it."""
    return total.name == "add" and not total.params and len(set(total.input_ids)) == 2 \
        and total.args.get("alpha", 1) == 1 and product.out_ids[0] in total.input_ids \
        and add.input_ids == total.out_ids[:1] \
        and _adds_bias(add, product) and _read_once(rec, product, total) and _read_once(rec, total, add)


def _with_bias(product: Op, add: Op, *, summed: bool = True) -> Op:
    """``product`` with ``add``'s bias; ``summed``: ``add`` reads the product itself (not a sum of
    it and another value), so its output is the linear's."""
    key = next(iter(add.params))
    passed = add.operands[key]
    outputs = add.outputs if summed else [product.outputs[0] + passed.to(product.outputs[0].dtype)]
    return replace(product, args={}, params={**product.params, "bias": add.params[key]},
                   param_values={**product.param_values, "bias": add.param_values[key]},
                   operands={**product.operands, "bias": passed.reshape(-1)}, spelling=f"{product.spelling} + bias",
                   out_ids=add.out_ids if summed else product.out_ids, outputs=outputs, call=None)


def _fold_patches(rec: OpRecorder, stream: list[Op]) -> list[Op]:
    """``F.unfold`` then a linear on the patches made one ``conv2d``, its weight the linear's
    reshaped to ``(out, in, kh, kw)``: a patch embedding written as im2col and a product computes
    what a strided convolution does, so it is compared with one, weight against weight."""
    out: list[Op] = []
    for op in stream:
        conv = _as_conv(rec, out[-1], op) if out and op.name == "linear" and out[-1].name == "unfold" else None
        if conv is not None:
            out[-1] = conv
        else:
            out.append(op)
    return out


_CONVOLUTIONS = frozenset({"conv1d", "conv2d", "conv3d"})


def _fold_pad(rec: OpRecorder, stream: list[Op]) -> list[Op]:
    """A zero ``F.pad`` read only by a convolution made part of that convolution's ``padding``:
    ``conv2d(pad(x, (3, 3, 3, 3)))`` computes what ``conv2d(x, padding=3)`` does (a port with explicit
    "same" padding). Padding unequal on the two sides of a dim stays visible, as a ``(before, after)``
    pair for that dim. A reflecting, replicating or circular pad before a convolution of no padding of
    its own (what ``nn.Conv2d(padding_mode='reflect')`` runs) is its ``padding`` and ``padding_mode``."""
    out: list[Op] = []
    for op in stream:
        pad = _source(rec, op.input_ids[0], op.index) if op.name in _CONVOLUTIONS and op.input_ids else None
        if pad is None or pad.name != "pad" or pad not in out or not _read_once(rec, pad, op) \
                or not _numeric(op.args.get("padding")):
            out.append(op)
            continue
        mode = pad.args.get("mode", "constant")
        if _zero_pad(pad) or mode in _PADDING_MODES and not any(op.args["padding"]) and len(pad.input_ids) == 1:
            out.remove(pad)
            args = {**op.args, "padding": _merged_padding(op.args["padding"], pad.args["pad"])}
            op = replace(op, spelling=f"pad + {op.spelling}", input_ids=pad.input_ids,
                         named_inputs={**op.named_inputs, "input": pad.input_ids[0]},
                         args={**args, "padding_mode": mode} if mode in _PADDING_MODES else args, call=None)
        out.append(op)
    return out


_PADDING_MODES = frozenset({"reflect", "replicate", "circular"})  # F.pad's modes a convolution's padding_mode names


_MAX_POOLS = {"max_pool1d": 1, "max_pool2d": 2, "max_pool3d": 3}


def _fold_pool_pad(rec: OpRecorder, stream: list[Op]) -> list[Op]:
    """A ``-inf`` ``F.pad`` read only by a max pool made part of that pool's ``padding`` and
    ``ceil_mode``: a port writing ``ceil_mode=True`` as a pad of the last window then a floor pool.
    Read so only where the pool so set, run on the unpadded input, gives what the two give."""
    out: list[Op] = []
    for op in stream:
        pad = _source(rec, op.input_ids[0], op.index) if op.name in _MAX_POOLS and op.input_ids else None
        if pad is not None and pad.name == "pad" and pad in out and _read_once(rec, pad, op) \
                and (folded := _pool_without_pad(rec, pad, op)) is not None:
            out.remove(pad)
            op = folded
        out.append(op)
    return out


def _pool_without_pad(rec: OpRecorder, pad: Op, pool: Op) -> Op | None:
    """``pool`` on what ``pad`` received: the padding each side shares added to its own, ``ceil_mode``
    as it is, else turned (a window over the extra end), or None when neither gives its result."""
    widths, dims = pad.args.get("pad"), _MAX_POOLS[pool.name]
    x = rec.passed(pad.input_ids[0], pad.index) if len(pad.input_ids) == 1 else None
    if pad.args.get("mode", "constant") != "constant" or pad.args.get("value") != -math.inf or x is None \
            or not isinstance(widths, tuple) or len(widths) > 2 * dims or not _numeric(pool.args.get("padding")):
        return None
    widths = widths + (0,) * (2 * dims - len(widths))
    shared = tuple(own + min(widths[2 * (dims - 1 - d)], widths[2 * (dims - 1 - d) + 1])
                   for d, own in enumerate(pool.args["padding"]))
    settings = {k: pool.args[k] for k in ("kernel_size", "stride", "dilation") if k in pool.args}
    for ceil in dict.fromkeys((bool(pool.args.get("ceil_mode")), True, False)):
        try:
            y = getattr(nn.functional, pool.name)(x, padding=shared, ceil_mode=ceil, **settings)
        except (RuntimeError, ValueError):  # a padding over half the kernel: no pool's own
            continue
        if y.shape == pool.outputs[0].shape and torch.equal(y.to(pool.outputs[0].dtype), pool.outputs[0]):
            return replace(pool, spelling=f"pad + {pool.spelling}", input_ids=pad.input_ids,
                           named_inputs={**pool.named_inputs, "input": pad.input_ids[0]},
                           args={**pool.args, "padding": shared, "ceil_mode": ceil}, call=None)
    return None


def _zero_pad(pad: Op) -> bool:
    return pad.args.get("mode", "constant") == "constant" and not pad.args.get("value") \
        and isinstance(pad.args.get("pad"), tuple) and len(pad.input_ids) == 1


def _numeric(padding: Any) -> bool:
    return isinstance(padding, tuple) and all(isinstance(p, int) for p in padding)


def _merged_padding(padding: tuple[int, ...], pad: tuple[int, ...]) -> tuple:
    """A convolution's per-dim ``padding`` plus ``F.pad``'s ``(last dim before, after, the dim before it
    before, after, ...)``: an int per dim where both sides are equal, else its ``(before, after)``."""
    merged = []
    for d, own in enumerate(padding):
        at = 2 * (len(padding) - 1 - d)  # F.pad lists the last dim first
        before, after = (pad[at], pad[at + 1]) if at + 1 < len(pad) else (0, 0)
        merged.append(own + before if before == after else (own + before, own + after))
    return tuple(merged)


def _as_conv(rec: OpRecorder, unfold: Op, linear: Op) -> Op | None:
    """The ``conv2d`` that ``unfold`` and ``linear`` on its patches compute together, or None."""
    x = rec.passed(unfold.input_ids[0], unfold.index) if len(unfold.input_ids) == 1 else None
    if x is None or x.ndim != 4 or "kernel_size" not in unfold.args or \
            _source(rec, linear.named_inputs.get("input"), linear.index) is not unfold:
        return None
    args, kernel, size = _patch_geometry(unfold, x)
    weight, y = linear.operands["weight"], linear.outputs[0]
    if not isinstance(linear.features, int):
        return None
    if weight.shape[1] == math.prod(kernel) and weight.shape[0] == x.shape[1]:
        args["groups"] = x.shape[1]  # each channel's patch by its own kernel row: a depthwise conv
    elif weight.shape[1] != x.shape[1] * math.prod(kernel):
        return None
    if y.numel() != x.shape[0] * weight.shape[0] * math.prod(size):
        return None
    y = y.movedim(linear.features, 1).reshape(x.shape[0], weight.shape[0], *size)  # the convolution's layout
    kernel_weight = weight.reshape(weight.shape[0], x.shape[1] // args["groups"], *kernel)
    conv = nn.functional.conv2d(x.to(y.dtype), kernel_weight.to(y.dtype), linear.operands.get("bias"), **args)
    if not _close(conv, y):
        return None  # the patches reordered before the product: not that convolution's weight
    return replace(linear, name="conv2d", spelling=f"unfold + {linear.spelling}", args=args,
                   operands={**linear.operands, "weight": kernel_weight}, input_ids=unfold.input_ids,
                   named_inputs={"input": unfold.input_ids[0]}, outputs=[y], scope=unfold.scope, features=-1, call=None)


def _patch_geometry(unfold: Op, x: torch.Tensor) -> tuple[dict[str, Any], tuple[int, int], list[int]]:
    """A 2-d ``unfold``'s settings as a convolution's arguments, its kernel size and its output size on ``x``."""
    pair = (lambda v: tuple(v) if isinstance(v, tuple) else (v, v))
    kernel, dilation, padding, stride = (pair(unfold.args.get(k, d)) for k, d in
                                         (("kernel_size", 1), ("dilation", 1), ("padding", 0), ("stride", 1)))
    size = [(x.shape[2 + i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in (0, 1)]
    return {"stride": stride, "padding": padding, "dilation": dilation, "groups": 1}, kernel, size


def _source(rec: OpRecorder, tensor_id: int | None, before: int) -> Op | None:
    """The computing op whose output ``tensor_id`` holds, through the layout ops between."""
    op = rec.producer(tensor_id, before) if tensor_id is not None else None
    while op is not None and op.kind != "compute" and op.input_ids:
        op = rec.producer(op.input_ids[0], op.index)
    return op


def _fold_batch_norm(rec: OpRecorder, stream: list[Op]) -> list[Op]:
    """A batch norm written out, ``(x - mean) * rsqrt(var + eps) * scale + bias`` (in any of its
    spellings: ``/ sqrt(...)``, ``** -0.5``, the scale multiplied into the inverse first), or folded
    into a scale and a shift computed from the statistics, ``x * s + (bias - mean * s)`` with ``s =
    scale * rsqrt(var + eps)`` (a frozen batch norm), made one ``batch_norm`` whose ``eps`` is the
    constant added to ``var`` and whose ``divides_by`` says what
    ``x - mean`` is divided by; read so only where the arithmetic computes exactly that."""
    made: dict[int, Op] = {}
    producers = {i: op for op in stream for i in op.out_ids}
    for op in stream:
        found = None
        if op.name == "sub" and len(op.input_ids) == 1 and list(op.params) == ["other"]:
            found = _written_batch_norm(rec, stream, producers, op)
        elif op.name == "mul" and len(op.input_ids) == 2 and not op.params and not op.absorbed:
            found = _frozen_batch_norm(rec, stream, producers, op)
        if found is not None:
            made[found[0].index] = found[0]
            for part in found[1]:
                part.absorbed = True
    return [made.get(op.index, op) for op in stream if op.index in made or not op.absorbed]


_NORMALIZERS = {"rsqrt": -0.5, "sqrt": 0.5}  # the power of (var + eps) each computes (pow: its exponent)


def _written_batch_norm(rec: OpRecorder, stream: list[Op], producers: dict[int, Op],
                        sub: Op) -> tuple[Op, list[Op]] | None:
    """The ``batch_norm`` that the arithmetic from ``sub`` (``x - mean``) on computes, and its ops
    (``producers``: the op of ``stream`` that writes each tensor id)."""
    chain, side, cur = [sub], [], sub
    while (nxt := _sole_reader(rec, stream, cur)) is not None and nxt.name in ("mul", "div", "add"):
        others = [i for i in nxt.input_ids if i != cur.out_ids[0]]
        extra = _from_parameters(producers, others[0]) if others else []
        if extra is None or len(others) + len(nxt.params) != 1:
            break
        chain, side, cur = chain + [nxt], side + extra, nxt
    parts = _batch_norm_parts(chain, side)
    x = rec.passed(sub.input_ids[0], sub.index)
    if parts is None or x is None or not _close(_batch_norm_value(x, parts), cur.outputs[0]):
        return None  # another computation than a batch norm: its ops are compared one by one
    return _batch_norm_op(sub, cur, parts), chain + side


_SHIFT_DEPTH = 6  # ops deep a shift may be computed: bias - mean * (weight * rsqrt(var + eps)) takes five
_FROZEN_ROLES = (("weight", "running_mean", "bias"), ("running_mean", "bias"))


def _frozen_batch_norm(rec: OpRecorder, stream: list[Op], producers: dict[int, Op],
                       mul: Op) -> tuple[Op, list[Op]] | None:
    """The ``batch_norm`` that ``x * s + t`` computes, ``mul`` being ``x * s``, where ``s`` and ``t``
    are computed from parameters and buffers alone (``s = weight * rsqrt(var + eps)``, ``t = bias -
    mean * s``), and its ops; which parameter plays which role is read from the values: the
    one assignment whose batch norm gives what the ops give."""
    add = _sole_reader(rec, stream, mul)
    derived = [_from_parameters(producers, i, _SHIFT_DEPTH) for i in mul.input_ids]
    if add is None or add.name != "add" or add.params or len(add.input_ids) != 2 \
            or sum(d is None for d in derived) != 1:
        return None
    shift = _from_parameters(producers, next(i for i in add.input_ids if i != mul.out_ids[0]), _SHIFT_DEPTH)
    x = rec.passed(mul.input_ids[derived.index(None)], mul.index)
    if shift is None or x is None:
        return None
    side = list({op.index: op for op in (*next(d for d in derived if d is not None), *shift)}.values())
    parts: dict[str, Any] = {"power": 1.0}
    readers = []
    for op in side:
        if op.name == "add" and not op.input_ids and list(op.params) == ["input"] and _number(op.args.get("other")):
            parts["running_var"], parts["eps"] = op, float(op.args["other"])
        elif op.name in _NORMALIZERS or op.name == "pow" and _number(op.args.get("exponent")):
            parts["power"] *= _NORMALIZERS.get(op.name) or float(op.args["exponent"])
        elif op.name in ("mul", "sub", "add") and len(op.params) == 1 and len(op.input_ids) == 1:
            readers.append(op)
        else:
            return None
    if "running_var" not in parts or parts["power"] >= 0:
        return None
    for roles in _FROZEN_ROLES:
        if len(roles) != len(readers):
            continue
        for order in itertools.permutations(readers):
            tried = {**parts, **dict(zip(roles, order))}
            if _close(_batch_norm_value(x, tried), add.outputs[0]):
                return _batch_norm_op(mul, add, tried, x_id=mul.input_ids[derived.index(None)]), [mul, add, *side]
    return None


def _batch_norm_value(x: torch.Tensor, parts: dict[str, Any]) -> torch.Tensor:
    """What a batch norm of ``parts`` (:func:`_batch_norm_parts`) computes on ``x``, operands as passed."""
    out = (x - _operand(parts["running_mean"])) * (_operand(parts["running_var"]) + parts["eps"]) ** parts["power"]
    out = out * _operand(parts["weight"]) if "weight" in parts else out
    return out + _operand(parts["bias"]) if "bias" in parts else out


def _sole_reader(rec: OpRecorder, stream: list[Op], op: Op) -> Op | None:
    """The op of ``stream`` that alone reads ``op``'s output."""
    readers = [o for o in stream if o.index > op.index and op.out_ids[0] in o.input_ids]
    return readers[0] if len(readers) == 1 and _read_once(rec, op, readers[0]) else None


def _from_parameters(producers: dict[int, Op], tensor_id: int, depth: int = 4) -> list[Op] | None:
    """The ops that compute ``tensor_id`` from parameters and constants alone (``rsqrt(var + eps)``), or None."""
    op = producers.get(tensor_id)
    if op is None or depth == 0:
        return None
    found = [op]
    for i in op.input_ids:
        more = _from_parameters(producers, i, depth - 1)
        if more is None:
            return None
        found += more
    return found


def _batch_norm_parts(chain: list[Op], side: list[Op]) -> dict[str, Any] | None:
    """What each op of a written-out batch norm stands for: ``{"running_mean": op, "running_var": op,
    "eps": float, "power": p, "weight": op, "bias": op}`` (``power``: of ``var + eps``, -0.5 when
    it divides by the square root), or None where an op has no such part."""
    parts: dict[str, Any] = {"running_mean": chain[0], "power": 1.0}
    for op in side:
        if op.name == "add" and not op.input_ids and list(op.params) == ["input"] and _number(op.args.get("other")):
            parts["running_var"], parts["eps"] = op, float(op.args["other"])
        elif op.name in _NORMALIZERS or op.name == "pow" and _number(op.args.get("exponent")):
            parts["power"] *= _NORMALIZERS.get(op.name) or float(op.args["exponent"])
        elif op.name == "mul" and len(op.params) == 1 and len(op.input_ids) == 1:
            parts["weight"] = op
        else:
            return None
    for op in chain[1:]:
        if op.params and op.name in ("mul", "add"):
            parts["weight" if op.name == "mul" else "bias"] = op
        elif op.params or op.name == "add" or op.name == "div" and "weight" in parts:
            return None
        else:
            parts["power"] *= -1.0 if op.name == "div" else 1.0
    return parts if "running_var" in parts and parts["power"] < 0 else None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _operand(op: Op) -> torch.Tensor:
    return next(iter(op.operands.values()))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    tol = DEFAULT_TOLERANCES.get(str(b.dtype).removeprefix("torch."), DEFAULT_TOLERANCES["float32"])
    return a.shape == b.shape and measure(a.to(b.dtype), b).passes(tol)


def _batch_norm_op(first: Op, last: Op, parts: dict[str, Any], x_id: int | None = None) -> Op:
    """One ``batch_norm`` op for a written-out one whose parts are ``parts`` (each op reads one
    parameter), from ``first`` (reading the activation ``x_id``, by default its only one) to ``last``."""
    ops, power = {k: v for k, v in parts.items() if isinstance(v, Op)}, parts["power"]
    key = {k: next(iter(op.params)) for k, op in ops.items()}
    x_id = first.input_ids[0] if x_id is None else x_id
    divides_by = "sqrt(var + eps)" if power == -0.5 else "var + eps" if power == -1 else f"(var + eps) ** {-power:g}"
    return Op(index=last.index, name="batch_norm", spelling="batch norm written out",
              args={"training": False, "eps": parts["eps"], "divides_by": divides_by},
              params={k: op.params[key[k]] for k, op in ops.items()},
              param_values={k: op.param_values[key[k]] for k, op in ops.items()},
              operands={k: op.operands[key[k]].reshape(-1) for k, op in ops.items()},
              input_ids=[x_id], named_inputs={"input": x_id}, out_ids=last.out_ids,
              outputs=last.outputs, scope=first.scope)


def _take_mask(rec: OpRecorder, op: Op) -> None:
    """A fused attention's mask: whether it gets one, its value, and the adds that built it absorbed,
    as the written-out attention absorbs the adds before its softmax."""
    passed = "attn_mask" in op.params or "attn_mask" in op.named_inputs
    op.mask = _passed_mask(rec, op) if passed else None
    if passed and "attn_mask" in op.named_inputs and _masks_nothing(op.mask):
        _absorb_read_only_by(rec, [op.named_inputs["attn_mask"]], [op])  # every key kept: no mask
        passed, op.mask = False, None
    op.args["attn_mask"] = passed
    op.mask_params = (op.params["attn_mask"],) if "attn_mask" in op.params else ()
    tensor_id, before = op.named_inputs.get("attn_mask") if passed else None, op.index
    for _ in range(_MASKS):
        found = tensor_id is not None and _walk_back(rec, tensor_id, [], [], mask=None, before=before)
        if not found or found.name != "add" or len(found.input_ids) + len(found.params) != 2:
            break
        found.absorbed = True  # a bias plus a window mask, summed for the fused call
        op.mask_params += tuple(n for n in found.params.values() if n not in op.mask_params)
        if not found.input_ids:  # a table plus a constant mask: nothing computed reaches the sum
            return
        op.mask_params += _absorb_built(rec, found.input_ids[1:], found.index, op.mask_params)
        tensor_id, before = found.input_ids[0], found.index
    if tensor_id is not None:
        op.mask_params += _absorb_built(rec, [tensor_id], before, op.mask_params)


_BUILT_OPS = 16  # ops that build a bias from parameters alone, at most (gathers, einsums, views)


def _absorb_built(rec: OpRecorder, tensor_ids: list[int], before: int, named: tuple[str, ...]) -> tuple[str, ...]:
    """Where ``tensor_ids`` are computed from parameters and constants alone (a relative position
    bias gathered from its table by einsums with one-hot lookups), the ops computing them absorbed
    into the attention that adds them to its scores: they are its mask, compared by value, which the
    other side may take from its table by indexing, no op at all. The parameters they read, those
    not in ``named``; () where a model input reaches them."""
    ops: dict[int, Op] = {}
    todo = [(tid, before) for tid in tensor_ids]
    while todo:
        tid, until = todo.pop()
        op = rec.producer(tid, until)
        if op is None or len(ops) >= _BUILT_OPS:
            return ()  # a model input (or a tensor of unknown origin): computed from the data
        if op.index not in ops:
            ops[op.index] = op
            todo += [(i, op.index) for i in op.input_ids]
    for op in ops.values():
        op.absorbed = True
    read = (n for op in sorted(ops.values(), key=lambda o: o.index) for n in op.params.values())
    return tuple(n for n in dict.fromkeys(read) if n not in named and not _is_constant(n))


def record_values(module: nn.Module, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """Every value ``module`` computes op by op, and the parameters its ops read as passed, run in
    its own dtype on copies of ``args``/``kwargs`` (state restored); [] when it cannot run."""
    try:
        rec = _run(module, args, kwargs, None)[0]
    except Exception:  # a twin that cannot run again vouches for nothing
        return []
    return [t for op in rec.ops for t in (*op.outputs, *op.operands.values())]


def _sdpa_head_dim(rec: OpRecorder, op: Op) -> int | None:
    q = rec.value(op.input_ids[0], op.index) if op.input_ids else None
    return int(q.shape[-1]) if q is not None else int(op.outputs[0].shape[-1])


def _working_copy(module: nn.Module, dtype: torch.dtype | None) -> nn.Module | None:
    if has_instance_forward(module):
        return None  # a patched forward closes over the original's submodules: a copy would run them
    try:
        clone = copy.deepcopy(module)
        return clone.to(dtype) if dtype is not None else clone
    except Exception:  # a module that cannot be copied: the caller falls back to the original
        return None


def has_instance_forward(module: nn.Module) -> bool:
    """Whether some submodule's ``forward`` was replaced on the instance by a function that a deep
    copy would not rebind (a lambda or closure over the original); a method bound to the module
    itself is rebound to the copy, so it does not count."""
    for m in module.modules():
        f = vars(m).get("forward")
        if f is not None and not (isinstance(f, types.MethodType) and f.__self__ is m):
            return True
    return False


class _Snapshot:
    """Restore a module's parameters and buffers bitwise (a BatchNorm in train mode updates them).

    Only tensors whose bits changed are written back: a write moves the tensor's version counter,
    which :class:`harness.guards.ModelState` reads as the model writing its own weights."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.saved = {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items()
                      if isinstance(v, torch.Tensor)}

    def restore(self) -> None:
        from harness.guards import same_bits  # guards imports, through pairs, what imports this module

        with torch.no_grad():
            for k, v in self.module.state_dict(keep_vars=True).items():
                if k in self.saved and not same_bits(v.detach(), self.saved[k]):
                    v.copy_(self.saved[k])


def _run(module: nn.Module, args: tuple, kwargs: dict, dtype: torch.dtype | None) -> tuple[OpRecorder, list[Op], Any]:
    """Record ``module`` on a float copy at ``dtype``; with ``dtype`` None, the original itself
    in its own dtype, its state snapshotted and restored afterwards."""
    if dtype is not None:
        # a copy even where the dtype is the tensor's own (``to`` returns the tensor itself): an
        # in-place activation in the run must not write into the trace's recorded input
        cast = _once(lambda t: t.to(dtype, copy=True) if t.is_floating_point() else t.clone())
        work = _working_copy(module, dtype)
        if work is None:
            raise TypeError("the module cannot be copied")
        native = _native_dtype(module, (args, kwargs))
        return record_ops(work, map_tensors(args, cast), map_tensors(kwargs, cast),
                          (dtype, native) if native is not None and native != dtype else None)
    snap = _Snapshot(module)
    try:
        clone = _once(torch.Tensor.clone)
        return record_ops(module, map_tensors(args, clone), map_tensors(kwargs, clone))
    finally:
        snap.restore()


def _native_dtype(module: nn.Module, inputs: Any) -> torch.dtype | None:
    """The floating dtype ``module`` runs in: its first floating parameter's, else its input's."""
    tensors = (*module.parameters(), *module.buffers(), *flatten_tensors(inputs).values())
    return next((t.dtype for t in tensors if t.is_floating_point()), None)


def _once(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` applied once per tensor: one tensor passed twice stays one (``mha(x, x, x)`` takes its
    self-attention path, one fused in-projection, only where ``query is key``)."""
    done: dict[int, torch.Tensor] = {}

    def apply(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in done:
            done[id(t)] = fn(t)
        return done[id(t)]
    return apply


def _run_both(candidate: nn.Module, c_inputs: tuple[tuple, dict], reference: nn.Module,
              r_inputs: tuple[tuple, dict], dtype: torch.dtype) -> tuple[tuple, tuple, str]:
    """Both twins recorded at ``dtype`` on copies, or, when either cannot be, both as they are."""
    try:
        return _run(candidate, *c_inputs, dtype), _run(reference, *r_inputs, dtype), str(dtype).removeprefix("torch.")
    except Exception:  # a patched forward, fixed-dtype internals: run the originals, restored after
        own = next((p.dtype for p in reference.parameters() if p.is_floating_point()), torch.float32)
        return _run(candidate, *c_inputs, None), _run(reference, *r_inputs, None), str(own).removeprefix("torch.")


# -- comparing ---------------------------------------------------------------------------------
def _finding(module: str, kind: str, op: str | None, argument: str | None, candidate: Any, reference: Any,
             text: str) -> dict[str, Any]:
    return {"module": module, "kind": kind, "op": op, "argument": argument,
            "candidate": _jsonable(candidate), "reference": _jsonable(reference), "text": text}


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def _show(v: Any) -> str:
    return repr(v) if isinstance(v, (float, str)) else str(v)


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0) or (a != a and b != b)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, int) and isinstance(b, tuple) or isinstance(a, tuple) and isinstance(b, int):
        n, t = (a, b) if isinstance(a, int) else (b, a)
        return bool(t) and all(_same_value(n, x) for x in t)  # stride 1 is stride (1, 1)
    return a == b


def _outputs_agree(c: list[torch.Tensor], r: list[torch.Tensor], tol: Tolerance, *, same_shape: bool = False) -> bool:
    """Same values within ``tol``, in the same layout or another (an einsum writing ``(B, N, H, D)``
    where the fused attention writes ``(B, H, N, D)``: :mod:`harness.adapters`); ``same_shape``:
    also in another layout of one shape (``(B, N, C)`` against ``(B, C, N)`` with ``N == C``)."""
    if len(c) != len(r):
        return False
    for a, b in zip(c, r):
        if not (a.is_floating_point() or a.is_complex()):
            a, b = a.double(), b.double()
        if a.ndim != b.ndim and (copies := _broadcast_copies(a, b)) is not None:
            a, b = copies  # computed once where the other side computes it per batch element, as copies
        if agreeing_layout(a, b, tol, same_shape=same_shape) is None:
            return False
    return True


@dataclass
class _Side:
    rec: OpRecorder
    stream: list[Op]
    output: dict[str, torch.Tensor]


def _where(stream: list[Op], pos: int, *, replaced: bool = False) -> str:
    """Where an op sits, in words, from its neighbours: inserted at stream position ``pos``, or
    (``replaced``) in the place of the op at ``pos``."""
    before = stream[pos - 1].name if pos > 0 else None
    nxt = pos + 1 if replaced else pos
    after = stream[nxt].name if nxt < len(stream) else None
    if before and not after:
        return f"after the module's last operation ({before})"
    if before and after:
        return f"between {before} and {after}"
    if after:
        return f"before {after}"
    return "in the module"


def _op_label(op: Op) -> str:
    if op.params:
        return f"{op.name} by {', '.join(sorted(set(op.params.values())))}"
    s = _scalar(op)
    if s is None:
        return op.name
    return f"{op.name} by {1.0 / s if op.name == 'div' else s:g}"  # x / 3 reads "div by 3", not by its factor


def _unpaired_finding(base: str, tag: str, op: Op, stream_other: list[Op], pos: int, ref_name: str = "",
                      candidate_scopes: frozenset[str] | None = None) -> dict:
    """An op one side runs and the other does not. ``candidate_scopes``: the candidate's submodules
    (relative to ``base``) that ran ops, where a missing op's reference scope may be named."""
    where, module = _where(stream_other, pos), _scoped(base, op)
    if tag == "missing_op":
        hint = " (a residual connection?)" if op.name == "add" and op.params == {} and len(op.input_ids) == 2 \
            and pos == len(stream_other) else ""
        who = "the reference"
        if op.scope and (ref_name not in ("", base) or candidate_scopes is not None and op.scope not in candidate_scopes):
            # the op's scope is the reference's: under another twin name it would glue the candidate's
            # name to the reference's, and a submodule the candidate does not have (independently
            # written models name them otherwise) is no place in it; the candidate module lacks the op
            module, who = base, f"the reference's {_scoped(ref_name or base, op)}"
        before = stream_other[pos - 1] if 0 < pos <= len(stream_other) else None
        if module == base and before is not None and before.scope:
            where += f", after {_scoped(base, before)}"  # where in the candidate, whose module holds no twin of it
        elif module == base and before is not None and before.folded:
            where += f", after its {_fold_words(before)}"
        text = f"{module}: {_op_label(op)} missing in the candidate {where}{hint}; {who} applies it"
        # the reference tensors it reads, by their keys in the reference: whoever holds the
        # candidate's copies is the module that should have applied it
        prefix = "" if ref_name in ("", ROOT) else ref_name + "."
        return {**_finding(module, "missing_op", op.name, None, None, op.name, text), **_rounding_only(op),
                "reads": sorted(prefix + name for name in op.params.values() if not _is_constant(name))}
    text = f"{module}: extra {_op_label(op)} in the candidate {where}; the reference has none"
    return {**_finding(module, "extra_op", op.name, None, op.name, None, text), **_rounding_only(op)}


def _rounding_only(op: Op) -> dict:
    """``{"rounding": True}`` for a cast to a dtype at least as wide as float32 (a softmax's float32
    result cast back): it changes values by a rounding, not a value a port computes."""
    dtypes = [t.dtype for t in op.outputs[:1]] if op.name == "cast" else []
    return {"rounding": True} if dtypes and all(_wide(d) for d in dtypes) else {}


def _wide(dtype: Any) -> bool:
    """Whether ``dtype`` (a torch dtype, its name, or None: the input's) rounds no more than float32."""
    if dtype is None:
        return True
    name = str(dtype).removeprefix("torch.")
    return name in ("float32", "float64")


def _argument_findings(module: str, c: Op, r: Op) -> list[dict]:
    out, skip = [], ()
    c_side, r_side = _number_operand(c), _number_operand(r)
    if c_side and r_side and c_side[0] != r_side[0] and c.name == r.name:
        # ``x - 1`` against ``1 - x``: one number in the other operand's place, not two arguments
        shown = (lambda side: f"{c.name}(x, {_show(side[1])})" if side[0] != _OPERAND_NAMES[c.name][0]
                 else f"{c.name}({_show(side[1])}, x)")
        text = f"{module}: {shown(c_side)} in the candidate, {shown(r_side)} in the reference: operands in another order"
        out.append(_finding(module, "argument", c.name, "operands", shown(c_side), shown(r_side), text))
        skip = _OPERAND_NAMES[c.name]
    for key in sorted(set(c.args) | set(r.args), key=lambda k: (k not in ("eps", "approximate", "scale", "dim"), k)):
        if key in skip:
            continue
        a, b = _meant(c.name, key, c.args.get(key)), _meant(r.name, key, r.args.get(key))
        if (key.startswith("arg") or c.name != r.name) and (key not in c.args or key not in r.args):
            continue  # positional leftovers of different spellings, or one op's own settings (a conv's stride)
        if key in _TRAINING_ONLY and not (c.args.get("training") or r.args.get("training")):
            continue  # a BatchNorm's momentum changes nothing in eval mode
        if key in _LAYOUT_ONLY:
            continue  # where or in what shape the result is written, not what it is
        if key == "dim" and _same_axes(c.in_shape, a, r.in_shape, b):
            continue  # the channels' dim of an NHWC twin against an NCHW one
        if key == "normalized_shape" and _same_trailing_count(a, b):
            continue  # a norm over (pixels, C) is one over pixels * C of the flattened input
        if not _same_value(a, b):
            op, inside = c.name, ""
            if c.name == "scaled_dot_product_attention" and key in ("dim", "dtype"):
                op, inside = "softmax", " (the attention's softmax)"
            named = op if key == op else f"{op} {key}"  # an indexing op's one argument: "index", not "index index"
            text = f"{module}: {named} {_show(a)} in the candidate, {_show(b)} in the reference{inside}"
            c_param, r_param = _parameter_in_place(c, key, a, b), _parameter_in_place(r, key, b, a)
            if r_param:  # a layer scale left a constant (1.0 where the port built none)
                b = f"the reference's {r_param}"
                text = (f"{module}: {op} by the constant {_show(a)} in the candidate where the reference's {op} "
                        f"reads {r_param}")
            elif c_param:
                a = c_param
                text = (f"{module}: {op} reads {c_param} in the candidate where the reference's {op} is by the "
                        f"constant {_show(b)}")
            out.append(_finding(module, "argument", op, key, a, b, text))
    return out


def _same_trailing_count(a: Any, b: Any) -> bool:
    """Whether two ``normalized_shape`` cover as many trailing elements: a norm over trailing
    ``(16, 8)`` normalizes what one over ``(128,)`` does on the input flattened (its weight's values,
    reshaped alike, compared as parameters)."""
    a, b = (a,) if isinstance(a, int) else a, (b,) if isinstance(b, int) else b
    return isinstance(a, tuple) and isinstance(b, tuple) and all(isinstance(n, int) for n in a + b) \
        and math.prod(a) == math.prod(b)


# the two operands of binary ops whose order matters, as bound
_OPERAND_NAMES = {"sub": ("input", "other"), "div": ("input", "other"), "pow": ("input", "exponent")}


def _number_operand(op: Op) -> tuple[str, Any] | None:
    """``(argument, number)`` of a binary op one of whose two operands is a number (``1 - x``)."""
    names = _OPERAND_NAMES.get(op.name)
    found = [(k, op.args[k]) for k in names or () if _number(op.args.get(k))]
    return found[0] if len(found) == 1 and len(op.input_ids) + len(op.params) == 1 else None


def _parameter_in_place(op: Op, key: str, own: Any, other: Any) -> str | None:
    """The parameter ``op`` passes where the other side's op passes the number ``other`` (``own``
    is None there: a tensor, no argument), by argument name, or for an add or a mul its one parameter."""
    if own is not None or not _number(other) or not op.params:
        return None
    if key in op.params:
        return op.params[key]
    return next(iter(op.params.values())) if op.name in _COMMUTATIVE and len(op.params) == 1 else None


def _head_findings(module: str, c: Op, r: Op, cand: _Side, ref: _Side) -> list[dict]:
    """An attention whose q, k and v are split into another number of heads than its twin's (the
    same tokens and width, heads of another size): the head count, said first, with the other
    arguments that differ, less a scale that each side derives from its own head size (1/sqrt(d)
    follows from the split; fixing it alone would not fix the port)."""
    split = _head_split(c, r, cand, ref)
    if split is None:
        return []
    (c_heads, c_dim), (r_heads, r_dim) = split
    shown = (lambda heads, dim: f"{heads} heads of {dim}" if heads else f"heads of {dim}")
    derived = _follows_head_size(c.args.get("scale"), c_dim) and _follows_head_size(r.args.get("scale"), r_dim)
    scale = " (its scale 1/sqrt(head size) follows)" if derived and not _same_value(c.args.get("scale"),
                                                                                       r.args.get("scale")) else ""
    text = (f"{module}: attention split into {shown(c_heads, c_dim)} in the candidate, {shown(r_heads, r_dim)} "
            f"in the reference: another head count{scale}")
    rest = [f for f in _argument_findings(module, c, r) if not (derived and f["argument"] == "scale")]
    return [_finding(module, "argument", c.name, "heads", c_heads or c_dim, r_heads or r_dim, text), *rest]


def _head_split(c: Op, r: Op, cand: _Side, ref: _Side) -> tuple[tuple[int | None, int], tuple[int | None, int]] | None:
    """``((heads, head size), (heads, head size))`` of two attentions whose queries hold as many
    values for as many tokens in heads of other sizes; a head count is None where the query folds
    the heads into its batch (``(batch * heads, tokens, head size)``) on both sides and the
    module's input does not say the batch."""
    if c.name != "scaled_dot_product_attention" or r.name != c.name or not c.input_ids or not r.input_ids:
        return None
    q_c, q_r = cand.rec.passed(c.input_ids[0], c.index), ref.rec.passed(r.input_ids[0], r.index)
    if q_c is None or q_r is None or q_c.ndim < 3 or q_r.ndim < 3:
        return None
    q_c, q_r = _as_fused_query(q_c, c), _as_fused_query(q_r, r)
    if q_c.shape[-1] == q_r.shape[-1] or q_c.shape[-2] != q_r.shape[-2] or q_c.numel() != q_r.numel():
        return None
    lead_c, lead_r = q_c.numel() // q_c.shape[-2] // q_c.shape[-1], q_r.numel() // q_r.shape[-2] // q_r.shape[-1]
    heads_c = int(q_c.shape[-3]) if q_c.ndim >= 4 else _folded_heads(lead_c, q_c.shape[-2], ref.rec)
    heads_r = int(q_r.shape[-3]) if q_r.ndim >= 4 else _folded_heads(lead_r, q_r.shape[-2], ref.rec)
    if heads_c is None and heads_r is not None and heads_r * lead_c % lead_r == 0:
        heads_c = heads_r * lead_c // lead_r  # the same batch on both sides: heads in proportion
    if heads_r is None and heads_c is not None and heads_c * lead_r % lead_c == 0:
        heads_r = heads_c * lead_r // lead_c
    return (heads_c, int(q_c.shape[-1])), (heads_r, int(q_r.shape[-1]))


def _as_fused_query(q: torch.Tensor, op: Op) -> torch.Tensor:
    """An attention's query with its axes as the fused call reads them (an einsum's ``(B, N, H, D)``
    as ``(B, H, N, D)``)."""
    return q.permute(op.query_axes) if op.query_axes and len(op.query_axes) == q.ndim else q


def _folded_heads(lead: int, tokens: int, rec: OpRecorder) -> int | None:
    """The heads a query ``(batch * heads, tokens, head size)`` folds into its batch, the batch read
    from the module's own token input ``(batch, tokens, width)`` (or ``(tokens, batch, width)``),
    or None where no such input says it."""
    for t in rec.given.values():
        if t.ndim == 3 and tokens in t.shape[:2]:
            batch = t.shape[1] if t.shape[0] == tokens else t.shape[0]
            return lead // batch if lead % batch == 0 else None
    return None


def _follows_head_size(scale: Any, head_size: int) -> bool:
    return isinstance(scale, (int, float)) and math.isclose(scale, head_size ** -0.5, rel_tol=1e-6)


def _same_axes(c_shape: tuple[int, ...], c_dim: Any, r_shape: tuple[int, ...], r_dim: Any) -> bool:
    """Whether two ``dim`` arguments name the same axes of twin inputs laid out differently (the
    channels: 3 of an NHWC map, 1 of an NCHW one): the inputs' shapes are permutations of each other,
    the dims name axes of the same sizes, and every axis of those sizes, so that any permutation
    taking one shape to the other takes one set of axes to the other (the channels of a map with
    as many rows as channels stay ambiguous, and their dims are compared as they are)."""
    c_dims, r_dims = _dim_tuple(c_dim), _dim_tuple(r_dim)
    if c_shape == r_shape or c_dims is None or r_dims is None:
        return False
    if any(d >= len(c_shape) for d in c_dims) or any(d >= len(r_shape) for d in r_dims):
        return False
    c, r = _unit_axes_left_out(c_shape, c_dims), _unit_axes_left_out(r_shape, r_dims)
    if c is not None and r is not None and (c[0], r[0]) != (c_shape, r_shape):
        return c == r or _same_axes(*c, *r)  # a (1, H, N, N) map against its (H, N, N) twin
    lead = len(r_shape) - len(c_shape)
    if lead and (c_shape[-lead:] if lead < 0 else r_shape[lead:]) == (r_shape if lead < 0 else c_shape):
        # one side computes per batch element what the other computes once (a table's scores): the same axes
        return [d - len(c_shape) for d in c_dims] == [d - len(r_shape) for d in r_dims]
    if sorted(c_shape) != sorted(r_shape):
        return _same_merged_axes(c_shape, c_dims, r_shape, r_dims)
    sizes = sorted(c_shape[d] for d in c_dims)
    return sizes == sorted(r_shape[d] for d in r_dims) \
        and all(sizes.count(n) == c_shape.count(n) for n in sizes)


def _unit_axes_left_out(shape: tuple[int, ...], dims: tuple[int, ...]) -> tuple | None:
    """``(shape, dims)`` without the axes of size 1, ``dims`` counted among the others; None where a
    dim names an axis of size 1."""
    kept = [d for d, n in enumerate(shape) if n != 1]
    if any(d not in kept for d in dims):
        return None
    return tuple(shape[d] for d in kept), tuple(kept.index(d) for d in dims)


def _same_merged_axes(c_shape: tuple[int, ...], c_dims: tuple[int, ...], r_shape: tuple[int, ...],
                      r_dims: tuple[int, ...]) -> bool:
    """Whether dims name one block of consecutive axes that one side holds merged (a mean over the
    flattened ``H*W`` against one over ``H`` and ``W``): the same sizes before and after it, and
    the same number of elements in it."""
    def split(shape: tuple[int, ...], dims: tuple[int, ...]) -> tuple | None:
        lo, hi = min(dims), max(dims) + 1
        if sorted(dims) != list(range(lo, hi)):
            return None
        return shape[:lo], math.prod(shape[lo:hi]), shape[hi:]
    c, r = split(c_shape, c_dims), split(r_shape, r_dims)
    return c is not None and c == r


def _dim_tuple(dim: Any) -> tuple[int, ...] | None:
    if isinstance(dim, int) and dim >= 0:
        return (dim,)
    if isinstance(dim, (tuple, list)) and dim and all(isinstance(d, int) and d >= 0 for d in dim):
        return tuple(dim)
    return None


# arguments whose None an op reads as a value: interpolate computes with align_corners=None as with False
_NONE_MEANS = {("interpolate", "align_corners"): False, ("interpolate", "recompute_scale_factor"): False,
               ("upsample", "align_corners"): False,
               **{(conv, "padding_mode"): "zeros" for conv in ("conv1d", "conv2d", "conv3d")}}


def _meant(op: str, key: str, value: Any) -> Any:
    return _NONE_MEANS.get((op, key), value) if value is None else value


# arguments that change only where or in what shape a result is written: the outputs are compared in
# any layout (x.mean((2, 3)) against an adaptive pool's kept dims, then flattened)
_LAYOUT_ONLY = frozenset({"inplace", "keepdim"})
_UNREAD_IN_TRAINING = frozenset({"running_mean", "running_var"})
Expected = Callable[[str], "torch.Tensor | None"]  # candidate parameter (relative name) -> what the weight map puts there


def _param_findings(module: str, c: Op, r: Op, ref_module: nn.Module, root: nn.Module | None = None,
                    expected: Expected | None = None) -> list[dict]:
    out = []
    training = c.args.get("training") or r.args.get("training")
    for key, r_key in _paired_params(c, r):
        if training and key in _UNREAD_IN_TRAINING:
            continue  # a norm in train mode normalizes with the batch's statistics; it only updates these
        passed_c, passed_r = c.operands.get(key, c.param_values[key]), r.operands.get(r_key, r.param_values[r_key])
        passed = _in_one_layout(passed_c, passed_r, as_passed=True)
        if passed is not None and torch.equal(passed[0], passed[1].to(passed[0].dtype)):
            continue  # the op receives the same values, however each side stores and lays them out
        name, ref_name = c.params[key], r.params[r_key]
        name = f"{key} ({name})" if _is_constant(name) else name
        stored = _stored_right(c.param_values[key], r.param_values[r_key],
                               expected(name) if expected is not None else None)
        other = _role_holding(r, r_key, passed_c) if stored is not None else None
        if other is not None:  # stored right, passed in another's place
            text = (f"{module}: {c.name} receives {name} as its {key}, where the reference passes {ref_name}; "
                    f"{name} holds what the reference passes as {other} ({r.params[other]}): operands swapped?")
            out.append(_finding(module, "argument", c.name, key, name, ref_name, text))
            continue
        if stored is not None and passed is None:
            continue  # stored as the reference's (a slice of a fused tensor): the ops' shapes differ, not it
        if stored is not None:
            err = (passed[0].double() - passed[1].double()).abs().max().item()
            how = _passed_otherwise(passed[0], passed[1], ref_name) \
                or f"in another layout than the reference's {ref_name}"
            text = (f"{module}: {c.name} operand {name} is stored right ({stored}) but passed {how} "
                    f"(max_abs difference {err:.3e} in what {c.name} receives)")
            out.append(_finding(module, "argument", c.name, name, f"{name} (another layout)", ref_name, text))
            continue
        # a fused tensor the reference builds from several (Swin V2's q, zero k and v biases) is
        # compared as it is passed, the rows of each member where they are
        fused = r.param_values[r_key] if r.param_values[r_key].shape == c.param_values[key].shape \
            else r.operands.get(r_key, r.param_values[r_key])
        member = _differing_member(c, key, fused)
        if member is not None:  # one of sibling projections fused against one fused tensor
            base = module.removesuffix(c.scope).rstrip(".") if c.scope else module
            lo, hi = member[2], member[3]
            where, rows = _scoped(base or "<root>", replace(c, scope=member[0])), f"[{lo}:{hi}]"
            holder = _whose_values(fused[lo:hi], ref_module, "", None) if fused is not r.param_values[r_key] else None
            if holder is not None:  # the reference's rows by the tensor they come from (k_bias), not the first's
                ref_name, rows = holder, ""
            own = member[1].get(key)
            if own is None or not fused[lo:hi].any():  # a bias one side has and the other has not
                out.append(_bias_finding(where, c.name, key, own, f"{ref_name}{rows}"))
                continue
            name = own
            held = _member_holding(c, key, member, fused)
            dims = _permuted_twin(c.param_values[key][lo:hi], fused[lo:hi])
            if held is not None:
                text = (f"{where}: {c.name} operand {name} holds the reference's {ref_name}{held}, "
                        f"where {ref_name}{rows} belongs (projections used in each other's place?)")
            elif dims is not None:  # its own rows, a square block stored transposed
                text = (f"{where}: {c.name} operand {name} holds the reference's {ref_name}{rows} with its dims "
                        f"permuted {dims} (stored transposed?)")
            elif moves := _reordered_operand(c.name, key, None, c.param_values[key][lo:hi], fused[lo:hi]):
                text = f"{where}: {c.name} operand {name} holds the reference's {ref_name}{rows} reordered: {moves}"
            else:
                text = f"{where}: {c.name} operand {name} holds other values than the reference's {ref_name}{rows}"
            out.append(_finding(where, "argument", c.name, name, f"{name} (other values)", f"{ref_name}{rows}", text))
            continue
        dims = _permuted_twin(c.param_values[key], r.param_values[r_key])
        if dims is not None:
            text = (f"{module}: {c.name} operand {name} holds the reference's {ref_name} with its dims permuted "
                    f"{dims} (stored transposed?)")
            out.append(_finding(module, "argument", c.name, name, f"{name} (permuted {dims})", ref_name, text))
            continue
        value = _constant(c.param_values[key])
        # a tensor of one value matches every other of that value (ones, zeros: a layer scale left at
        # its initial value against a batch norm's fresh variance): it tells whose it is not
        holds = None if value is not None else _whose_values(c.param_values[key], ref_module, ref_name, root)
        moves = None if holds or value is not None else _reordered_operand(c.name, key, passed, c.param_values[key],
                                                                            r.param_values[r_key])
        part = None if holds or value is not None or moves else _part_held(
            c.param_values[key], r.param_values[r_key], expected(name) if expected is not None else None)
        if part is not None:  # a part of a fused tensor (one head of a split projection), another part's
            held, meant = part
            where_meant = f", where the weight map puts {ref_name}{meant} (parts used in each other's place?)" \
                if meant else " (another part than its own?)"
            text = f"{module}: {c.name} operand {name} holds the reference's {ref_name}{held}{where_meant}"
            out.append(_finding(module, "argument", c.name, name, f"{name} ({ref_name}{held})",
                                f"{ref_name}{meant or ''}", text))
            continue
        if holds:
            text = f"{module}: {c.name} operand {name} holds the reference's {holds} (swapped weights?)"
        elif value is not None:
            text = (f"{module}: {c.name} operand {name} holds the constant {value:g} everywhere, where the reference's "
                    f"{ref_name} holds other values (left at its initial value?)")
        elif moves:
            text = f"{module}: {c.name} operand {name} holds the reference's {ref_name} reordered: {moves}"
        else:
            text = f"{module}: {c.name} operand {name} holds other values than the reference's {ref_name} " \
                   f"({_operand_difference(passed, c.param_values[key], r.param_values[r_key])})"
        out.append(_finding(module, "argument", c.name, name, holds or f"{name} (other values)", ref_name, text))
    if len(c.params) != len(r.params) and c.name not in _COMMUTATIVE:  # a bias dropped or added
        for key in sorted(set(c.params) ^ set(r.params)):
            if key in c.named_inputs or key in r.named_inputs:
                continue  # passed, as a value computed from the inputs: compared by value
            if key == "attn_mask" and c.mask is not None and r.mask is not None:
                continue  # written out against fused: compared by value (_mask_findings)
            if any(key in m[1] for op in (c, r) for m in op.members):
                continue  # a member of fused siblings passes it: present, compared through the rows
            if key in r.params:
                text = f"{module}: {c.name} {key} missing in the candidate; the reference passes {r.params[key]}"
            else:
                text = f"{module}: {c.name} {key} {c.params[key]} in the candidate; the reference passes none"
            out.append(_finding(module, "argument", c.name, key, c.params.get(key), r.params.get(key), text))
    return out


_EXACT = Tolerance(atol=0.0, rtol=0.0)
# what each axis of a weight holds, in the layout the op receives it
_WEIGHT_AXES = {"linear": ("rows (output features)", "columns (input features)"),
                **{f"conv{n}d": ("output channels", "input channels", *("kernel " + a for a in "DHW"[3 - n:]))
                   for n in (1, 2, 3)}}


def _reordered_operand(op: str, key: str, passed: tuple[torch.Tensor, torch.Tensor] | None, stored_c: torch.Tensor,
                       stored_r: torch.Tensor) -> str | None:
    """How an operand holds exactly its twin's values reordered along its axes (q and k row blocks of
    a fused projection exchanged, conv groups swapped, a kernel's input channels reversed: RGB read as
    BGR), axis by axis in words, in the layout the op receives it (else as stored); None if it does not."""
    pair = passed or _in_one_layout(stored_c, stored_r)
    if pair is None or pair[0].shape != pair[1].shape or not pair[0].is_floating_point() or pair[0].numel() == 0:
        return None
    a, b = pair[0], pair[1].to(pair[0].dtype)
    # the same values in another order, not other values: extremes first, which cost no sort
    if a.amax() != b.amax() or a.amin() != b.amin() or not torch.equal(a.flatten().sort().values,
                                                                        b.flatten().sort().values):
        return None
    axes = _WEIGHT_AXES.get(op, ()) if key == "weight" else ()
    named = (lambda d: axes[d] if d < len(axes) else f"dim {d}")
    return "; ".join(f"{named(d)} {text}" for d, text in rearrangement(a, b, _EXACT)) or None


def _passed_otherwise(passed: torch.Tensor, reference: torch.Tensor, ref_name: str) -> str | None:
    """How a parameter stored right reaches its op otherwise than its twin passes ``ref_name``, in
    words that follow "passed": reordered (a position table rolled by one token), or changed in one
    block only (its class token's row zeroed before the add); None where neither says it."""
    if how := _reordering(passed, reference, _EXACT):
        return f"in another layout than the reference's {ref_name}: its values reordered, {how}"
    block = _differing_block(passed, reference)
    if block is None:
        return None
    where, zeroed = block
    if zeroed:  # a part left out of the sum (a class token's position)
        return f"with {where} zeroed, where the reference's {ref_name} holds values (the rest agrees)"
    return f"with {where} holding other values than the reference's {ref_name} (the rest agrees)"


def _differing_block(a: torch.Tensor, b: torch.Tensor) -> tuple[str, bool] | None:
    """The smallest block of ``a`` holding every difference from ``b`` (of one shape), as an index
    (``[5:6]``: a table's row 5; ``[:, 0:1]``), and whether ``a`` holds zeros all over it; None where
    they agree or every position along every axis differs (no part to name)."""
    differs = a != b.to(a.dtype)
    if a.ndim == 0 or not differs.any():
        return None
    # along each axis, the first and last differing position
    box = []
    for d in range(a.ndim):
        along = differs.movedim(d, 0).flatten(1).any(1) if a.ndim > 1 else differs
        at = along.nonzero().flatten()
        box.append((int(at[0]), int(at[-1]) + 1))
    full = [hi - lo == n for (lo, hi), n in zip(box, a.shape)]
    if all(full):
        return None
    last = max(d for d in range(a.ndim) if not full[d])
    where = "[" + ", ".join(":" if full[d] else f"{box[d][0]}:{box[d][1]}" for d in range(last + 1)) + "]"
    return where, not a[tuple(slice(lo, hi) for lo, hi in box)].any()


def _part_findings(module: str, c: Op, r: Op, cs: list[Op], expected: Expected | None) -> list[dict]:
    """A parameter stored right of which ``c`` receives one slice where the reference passes all of
    it, and no other op of the candidate receives the rest: a position table added to the patch
    tokens only (``pos[:, 1:]``), its class token's row never added."""
    out = []
    for key, r_key in _paired_params(c, r):
        passed_c, passed_r = c.operands.get(key, c.param_values[key]), r.operands.get(r_key, r.param_values[r_key])
        stored_c, name = c.param_values[key], c.params[key]
        if passed_r.numel() != r.param_values[r_key].numel() or passed_c.numel() >= stored_c.numel() \
                or _stored_right(stored_c, r.param_values[r_key], expected(name) if expected else None) is None:
            continue
        part = _slice_of(passed_c, stored_c)
        if part is None or any(op is not c and name in op.params.values() for op in cs):
            continue  # another op receives a part of it too: the rest is applied elsewhere
        taken, rest = part
        text = (f"{module}: {c.name} receives {name}{taken} only ({passed_c.numel()} of its {stored_c.numel()} "
                f"values), where the reference passes all of {r.params[r_key]}: "
                f"{' and '.join(name + part for part in rest)} never reaches this {c.name}")
        out.append(_finding(module, "argument", c.name, name, f"{name}{taken}", r.params[r_key], text))
    return out


def _slice_of(part: torch.Tensor, whole: torch.Tensor) -> tuple[str, list[str]] | None:
    """Where ``part`` lies in ``whole`` as one slice along one axis (``[:, 1:9]``), and the slices
    of ``whole`` left out (``[:, 0:1]``), or None."""
    if part.ndim != whole.ndim:
        return None
    short = [d for d in range(whole.ndim) if part.shape[d] != whole.shape[d]]
    if len(short) != 1 or part.shape[short[0]] > whole.shape[short[0]]:
        return None
    d, n = short[0], part.shape[short[0]]
    index = (lambda lo, hi: "[" + ":, " * d + f"{lo}:{hi}]")
    for start in range(whole.shape[d] - n + 1):
        if torch.equal(whole.narrow(d, start, n), part.to(whole.dtype)):
            rest = [index(lo, hi) for lo, hi in ((0, start), (start + n, whole.shape[d])) if hi > lo]
            return index(start, start + n), rest
    return None


def _part_held(stored: torch.Tensor, reference: torch.Tensor,
               mapped: torch.Tensor | None) -> tuple[str, str | None] | None:
    """Where the candidate's ``stored``, smaller than the reference's tensor, lies in it as one slice
    along one axis (``[16:32]``; its axes of size 1 left out: a 1x1 conv's kernel against a linear's
    matrix), and where the weight map's ``mapped`` value for it lies (None where unknown); None where
    it is no slice of it."""
    if stored.numel() >= reference.numel() or not stored.is_floating_point():
        return None
    whole = reference if reference.ndim == stored.ndim else reference.reshape(unit_axes_dropped(reference.shape))
    held = _slice_of(stored, whole)
    if held is None:
        return None
    meant = _slice_of(mapped, whole) if mapped is not None and mapped.shape == stored.shape else None
    return held[0], meant[0] if meant is not None and meant[0] != held[0] else None


def _broadcast_findings(module: str, c: Op, r: Op) -> list[dict]:
    """A parameter operand spread over other axes of the result than its twin's, where the two ops
    receive the same inputs and write results of one shape: a layer scale passed in part (one of
    its values for every channel), or broadcast along another axis than the channels'."""
    if c.shape is None or c.shape != r.shape:
        return []
    out = []
    for key, r_key in _paired_params(c, r):
        passed_c, passed_r = c.operands.get(key, c.param_values[key]), r.operands.get(r_key, r.param_values[r_key])
        axes_c, axes_r = _spread(passed_c, len(c.shape)), _spread(passed_r, len(r.shape))
        if axes_c == axes_r:
            continue
        name, ref_name = c.params[key], r.params[r_key]
        if passed_c.numel() < passed_r.numel():
            text = (f"{module}: {c.name} receives {passed_c.numel()} of {name}'s values (passed as "
                    f"{tuple(passed_c.shape)}), where the reference passes all {passed_r.numel()} of {ref_name} "
                    f"({tuple(passed_r.shape)}): sliced or reshaped otherwise before it broadcasts")
        else:
            text = (f"{module}: {c.name} operand {name} runs along axes {list(axes_c)} of the result "
                    f"{tuple(c.shape)}, where the reference's {ref_name} runs along axes {list(axes_r)}: "
                    f"broadcast along another axis (reshaped otherwise?)")
        out.append(_finding(module, "argument", c.name, name, f"axes {list(axes_c)}", f"axes {list(axes_r)}", text))
    return out


def _spread(operand: torch.Tensor, ndim: int) -> tuple[int, ...]:
    """The axes of an ``ndim`` result along which a broadcast ``operand`` holds more than one value."""
    shift = ndim - operand.ndim
    return tuple(d + shift for d, n in enumerate(operand.shape) if n > 1)


def _permuted_twin(stored: torch.Tensor, reference: torch.Tensor) -> tuple[int, ...] | None:
    """The permutation of ``stored``'s dims under which it holds ``reference``'s values exactly (a
    square weight stored transposed, a kernel with its H and W exchanged), or None."""
    if stored.ndim != reference.ndim and len(unit_axes_dropped(stored.shape)) == len(unit_axes_dropped(reference.shape)):
        # a linear's square weight against its 1x1 conv's: compared without the axes of size 1
        stored, reference = stored.reshape(unit_axes_dropped(stored.shape)), reference.reshape(unit_axes_dropped(reference.shape))
    for dims in shape_permutations(tuple(reference.shape), tuple(stored.shape)):
        if torch.equal(stored.permute(dims), reference.to(stored.dtype)):
            return dims
    return None


def _role_holding(r: Op, r_key: str, value: torch.Tensor) -> str | None:
    """Another parameter argument of ``r`` than ``r_key`` to which the reference passes ``value``
    (in any layout): the candidate passed it in the wrong place (a norm's mean and variance swapped)."""
    for other, name in r.params.items():
        if other == r_key or name == r.params[r_key]:
            continue
        pair = _in_one_layout(value, r.operands.get(other, r.param_values[other]))
        if pair is not None and torch.equal(pair[0], pair[1].to(pair[0].dtype)):
            return other
    return None


def _bias_finding(where: str, op: str, key: str, own: str | None, reference: str) -> dict:
    """A fused member without ``key`` (a bias) where the reference's rows of it hold values, or with
    one where the reference's rows are zeros (a key projection that has no bias)."""
    if own is None:
        text = f"{where}: {op} {key} missing in the candidate; the reference passes {reference}"
        return _finding(where, "argument", op, key, None, reference, text)
    text = (f"{where}: {op} {key} {own} in the candidate, where the reference passes zeros ({reference}): "
            f"a {key} the reference does not have")
    return _finding(where, "argument", op, key, own, f"{reference} (zeros)", text)


def _differing_member(c: Op, key: str, reference: torch.Tensor) -> tuple | None:
    """The first of ``c``'s fused members whose rows of parameter ``key`` differ from ``reference``'s."""
    stored = c.param_values[key]
    if not c.members or stored.shape != reference.shape:
        return None
    for member in c.members:
        lo, hi = member[2], member[3]
        # a member without the key (a projection without a bias) holds zeros in the fused rows
        if not torch.equal(stored[lo:hi], reference[lo:hi].to(stored.dtype)):
            return member
    return None


def _member_holding(c: Op, key: str, member: tuple, reference: torch.Tensor) -> str | None:
    """The rows of the fused ``reference`` that a differing member holds instead of its own (``k_proj``
    used where ``q_proj`` belongs holds the key rows): ``"[64:128]"``, or None."""
    lo, hi = member[2], member[3]
    rows = c.param_values[key][lo:hi]
    for other in c.members:
        a, b = other[2], other[3]
        if (a, b) != (lo, hi) and b - a == hi - lo and torch.equal(rows, reference[a:b].to(rows.dtype)):
            return f"[{a}:{b}]"
    return None


def _paired_params(c: Op, r: Op) -> list[tuple[str, str]]:
    """The candidate's and the reference's parameter operands that play one role: by argument name,
    and for ``add``/``mul`` whatever the side they stand on (``gamma * x`` against ``x * gamma``): those
    of one name (``grn.weight`` and ``mlp.grn.weight``: a ``mul`` by the weight against an ``addcmul``
    of bias and weight) first, the others in order."""
    pairs = [(k, k) for k in c.params if k in r.params]
    if c.name in _COMMUTATIVE:
        cs, rs = [k for k in c.params if k not in r.params], [k for k in r.params if k not in c.params]
        last = (lambda name: name.rsplit(".", 1)[-1])
        for k in list(cs):
            same = [q for q in rs if last(r.params[q]) == last(c.params[k])]
            if same:
                pairs.append((k, same[0]))
                cs.remove(k), rs.remove(same[0])
        pairs += zip(cs, rs)
    return pairs


def _in_one_layout(a: torch.Tensor, b: torch.Tensor, *,
                   as_passed: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``a`` and ``b`` in one shape: as they are, or ``a`` in the layout that best holds ``b``'s values
    (a ``(C,)`` scale against its ``(1, C, 1, 1)`` view, a kernel permuted); None when no layout fits.
    ``as_passed``: operands as two ops receive them, of one shape but for axes of size 1, are
    compared as they lie."""
    if a.shape == b.shape:
        return a, b
    if as_passed and (expanded := _broadcast_copies(a, b)) is not None:
        return expanded  # a table expanded over the batch holds, in each copy, what the other side's holds
    if as_passed and unit_axes_dropped(a.shape) == unit_axes_dropped(b.shape):
        # axes of size 1 added or dropped move no value (a linear's weight against its 1x1 conv's):
        # a permutation there would pass a square matrix transposed for the same values
        return a.reshape(b.shape), b
    adapter = find_adapter(a, b)
    return None if adapter is None else (adapter.apply(a), b)


def _broadcast_copies(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``a`` and ``b`` in one shape where one is the other's shape with leading axes of copies (an
    ``expand`` over the batch: each copy holds the same values); None otherwise."""
    small, big = (a, b) if a.ndim < b.ndim else (b, a)
    lead = big.ndim - small.ndim
    if lead == 0 or big.shape[lead:] != small.shape \
            or not torch.equal(big, big[(0,) * lead].expand(big.shape)):
        return None
    return (a.expand(b.shape), b) if small is a else (a, b.expand(a.shape))


def _operand_difference(passed: tuple[torch.Tensor, torch.Tensor] | None, stored_c: torch.Tensor,
                        stored_r: torch.Tensor) -> str:
    """``max_abs difference ...`` between two operands in one layout: as passed, else as stored."""
    pair = passed or _in_one_layout(stored_c, stored_r)
    if pair is None:
        return f"shapes {tuple(stored_c.shape)} and {tuple(stored_r.shape)}"
    return f"max_abs difference {(pair[0].double() - pair[1].double()).abs().max().item():.3e}"


def _mask_findings(module: str, c: Op, r: Op, tol: Tolerance,
                   recs: tuple[OpRecorder, OpRecorder] | None = None) -> list[dict]:
    """The attention's additive mask or bias (a relative position bias), compared by value whether
    it is a parameter, a computed value or a sum written out before the softmax; where it holds
    other values, the block of the table it is built from that differs (``recs``: the two runs)."""
    if c.mask is None or r.mask is None:
        return []
    try:
        a, b = torch.broadcast_tensors(c.mask.double(), r.mask.double())
    except RuntimeError:
        return []  # another layout of the scores: nothing elementwise to say
    if _outputs_agree([a], [b], tol):
        return []
    masked_a, masked_b = _masked(a), _masked(b)
    kept = ~masked_a & ~masked_b
    err = (a - b)[kept].abs().max().item() if kept.any() else 0.0
    where = f"{module}: {c.name} attn_mask (the bias or mask added to the attention scores)"
    built = lambda op: f" (built from {', '.join(op.mask_params)})" if op.mask_params else ""
    dims = next((d for d in shape_permutations(tuple(b.shape), tuple(a.shape))
                 if _outputs_agree([a.permute(d)], [b], tol)), None)
    if dims is not None:  # the reference's bias laid out otherwise: queries for keys, heads for queries
        text = f"{where}{built(c)} holds the reference's values{built(r)} with its dims permuted {dims} (transposed?)"
        return [_finding(module, "argument", c.name, "attn_mask", f"attn_mask (permuted {dims})",
                         ", ".join(r.mask_params) or "attn_mask", text)]
    if torch.equal(masked_a, masked_b):
        text = f"{where}{built(c)} holds other values than the reference's{built(r)} (max_abs difference {err:.3e})" \
               f"{_table_block(c, r, recs)}"
        return [_finding(module, "argument", c.name, "attn_mask", "attn_mask (other values)",
                         ", ".join(r.mask_params) or "attn_mask", text)]
    rest = f"; where both keep a position, max_abs difference {err:.3e}" if err > tol.atol else ""
    text = f"{where}{built(c)} {_masked_otherwise(masked_a, masked_b)}{rest}"
    return [_finding(module, "argument", c.name, "attn_mask", "attn_mask (masks other positions)",
                     ", ".join(r.mask_params) or "attn_mask", text)]


def _table_block(c: Op, r: Op, recs: tuple[OpRecorder, OpRecorder] | None) -> str:
    """``": table[5:6] zeroed ..."``: the one block in which a table the candidate's mask is built
    from (read through an index: no position of the mask says which row) differs from its twin's,
    the tables paired in the order the masks read them; "" where none says it."""
    if recs is None or len(c.mask_params) != len(r.mask_params):
        return ""
    for name, ref_name in zip(c.mask_params, r.mask_params):
        a, b = _param_value(recs[0], name), _param_value(recs[1], ref_name)
        if a is None or b is None or a.shape != b.shape or torch.equal(a, b.to(a.dtype)):
            continue
        return _block_words(name, a, b)
    return ""


def _block_words(name: str, held: torch.Tensor, reference: torch.Tensor) -> str:
    """``": table[5:6] zeroed, the rest agrees"``: where ``held`` differs from ``reference`` (of one
    shape) in one block only (a table's row), that block; "" where it differs all over."""
    block = _differing_block(held, reference)
    if block is None:
        return ""
    where, zeroed = block
    return f": {name}{where} {'zeroed' if zeroed else 'differs'}, the rest agrees"


def _param_value(rec: OpRecorder, name: str) -> torch.Tensor | None:
    """The parameter or buffer ``name`` as the module holds it, from the first op of ``rec`` reading it."""
    for op in rec.ops:
        for key, held in op.params.items():
            if held == name and key in op.param_values:
                return op.param_values[key]
    return None


def _folded_norm_findings(where: str, mul: Op, r: Op, rec: OpRecorder) -> list[dict]:
    """A batch norm folded ahead of time into a stored scale and shift, ``x * scale + shift``, in
    the place of the reference's batch norm in eval mode: each of the two holding other values than
    the norm folds into, ``weight / sqrt(running_var + eps)`` and ``bias - running_mean * scale``,
    by channel, beyond the rounding of the dtype the candidate stores them in; [] where ``mul`` opens
    no such fold or it holds what the norm folds into."""
    out = []
    for op, role, wrong, held, want, how in _fold_tensors(mul, r, rec) or ():
        if wrong.any():
            name = next(iter(op.params.values()))
            at = wrong.nonzero().flatten().tolist()
            shown = ", ".join(map(str, at[:_CHANNELS_SHOWN])) + (", ..." if len(at) > _CHANNELS_SHOWN else "")
            text = (f"{where}: {op.name} operand {name}, the {role} of a batch norm folded ahead of time, holds "
                    f"other values than the reference's batch norm ({', '.join(r.params.values())}) folds into, "
                    f"{how}, at {len(at)} of {held.numel()} channels ([{shown}]; max_abs difference "
                    f"{(held - want).abs().max().item():.3e})")
            out.append(_finding(where, "argument", op.name, name, f"{name} (other values)", f"{role} folded", text))
    return out


def _fold_tensors(mul: Op, r: Op, rec: OpRecorder) -> list[tuple] | None:
    """``(op, role, wrong, held, want, how)`` for the scale and the shift of a batch norm stored
    folded, ``mul`` being ``x * scale``, against what the reference's eval-mode batch norm ``r`` folds
    into (``wrong``: the channels differing beyond the rounding of the dtype the candidate stores them
    in); None where ``mul`` opens no such fold of as many channels."""
    if mul.name != "mul" or len(mul.params) != 1 or r.name != "batch_norm" or r.args.get("training"):
        return None
    add = next((op for op in rec.ops[mul.index + 1:] if mul.out_ids[0] in op.input_ids), None)
    if add is None or add.name != "add" or len(add.params) != 1 or add.input_ids != mul.out_ids[:1]:
        return None
    mean, var = (r.operands.get(k) for k in ("running_mean", "running_var"))
    if mean is None or var is None:
        return None
    weight, bias = (r.operands[k].double().flatten() if k in r.operands else None for k in ("weight", "bias"))
    scale = (var.double().flatten() + r.args.get("eps", 1e-5)).rsqrt() * (weight if weight is not None else 1)
    folded = {"scale": (scale, "weight / sqrt(running_var + eps)"),
              "shift": ((bias if bias is not None else 0) - mean.double().flatten() * scale,
                        "bias - running_mean * scale")}
    stored = rec.recast[1] if rec.recast is not None else mul.param_values[next(iter(mul.params))].dtype
    rtol = 4 * torch.finfo(stored).eps if stored.is_floating_point else 0.0
    out = []
    for op, role in ((mul, "scale"), (add, "shift")):
        held, (want, how) = op.param_values[next(iter(op.params))].double().flatten(), folded[role]
        if held.shape != want.shape:
            return None
        wrong = ~torch.isclose(held, want, rtol=rtol, atol=rtol * want.abs().max().item())
        out.append((op, role, wrong, held, want, how))
    return out


_CHANNELS_SHOWN = 4  # channels named in a finding, at most


def _masked(mask: torch.Tensor) -> torch.Tensor:
    """Where an additive mask masks: ``-inf``, or a value as low as a port writes for it (the dtype's minimum)."""
    return ~torch.isfinite(mask) | (mask <= torch.finfo(mask.dtype).min / 2)


def _masked_otherwise(a: torch.Tensor, b: torch.Tensor) -> str:
    """How the positions mask ``a`` masks differ from those ``b`` masks (both of one shape), counted
    once along each axis where neither varies (the heads and queries of a key padding mask): how
    many it masks that ``b`` keeps and keeps that ``b`` masks; said inverted where, over the keys
    either masks anywhere, it masks exactly what ``b`` keeps (a padding mask of the other polarity)."""
    for d in reversed(range(a.ndim)):
        if a.ndim > 1 and all(torch.equal(t, t.narrow(d, 0, 1).expand_as(t)) for t in (a, b)):
            a, b = a.select(d, 0), b.select(d, 0)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    shape = " x ".join(str(n) for n in a.shape) or "1"
    text = f"masks {only_a} position(s) the reference keeps and keeps {only_b} it masks (of {shape} positions)"
    keys = (a | b).reshape(-1, a.shape[-1]).any(0) if a.ndim else a | b
    inverted = bool(keys.any()) and torch.equal(a[..., keys], ~b[..., keys]) if a.ndim else bool(a != b)
    return text + (": its polarity looks inverted" if inverted else "")


def _stored_right(stored: torch.Tensor, reference: torch.Tensor, mapped: torch.Tensor | None) -> str | None:
    """How the candidate's stored parameter holds the reference's values (``mapped``: what the
    weight map puts there), or None when it does not."""
    if mapped is not None:
        return "as the weight map puts it" if mapped.shape == stored.shape and torch.equal(stored, mapped.to(stored.dtype)) \
            else None
    if stored.shape == reference.shape:
        return "the reference's values" if torch.equal(stored, reference.to(stored.dtype)) else None
    layout = find_adapter(stored, reference)
    return f"through {layout.description}" if layout is not None and torch.equal(
        layout.apply(stored), reference.to(stored.dtype)) else None


def _constant(t: torch.Tensor) -> float | None:
    """The one value every element of ``t`` holds (of several elements), else None."""
    if t.numel() < 2 or not (t.is_floating_point() or t.is_complex()) or not bool((t == t.flatten()[0]).all()):
        return None
    return float(t.flatten()[0].real)


def _whose_values(t: torch.Tensor, module: nn.Module, exclude: str, root: nn.Module | None = None) -> str | None:
    """The reference tensor whose values ``t`` holds (as it is, reshaped or transposed): one of
    ``module``'s other than ``exclude``, else any of ``root``'s other than that one."""
    own = dict((*module.named_parameters(), *module.named_buffers()))
    scopes = [{k: v for k, v in own.items() if k != exclude}]
    if root is not None:
        scopes.append({k: v for k, v in (*root.named_parameters(), *root.named_buffers())
                       if all(v is not o for o in own.values())})
    for tensors in scopes:
        for name, p in tensors.items():
            if p.shape == t.shape and torch.equal(p.to(t.dtype), t):
                return name
        for name, p in tensors.items():
            if p.numel() == t.numel() and p.shape != t.shape and torch.equal(p.reshape(t.shape).to(t.dtype), t):
                return f"{name} (reshaped)"
            if p.ndim == 2 and t.ndim == 2 and p.shape == t.shape[::-1] and torch.equal(p.t().to(t.dtype), t):
                return f"{name} (transposed)"
    return None


def _layout_between(side: _Side, lo: int, hi: int) -> list[Op]:
    return [op for op in side.rec.ops[lo + 1:hi] if op.kind == "layout" and not op.absorbed]


def _scopes(rec: OpRecorder) -> frozenset[str]:
    """The submodules (and their ancestors) in which a recorded run ran ops."""
    names = {op.scope for op in rec.ops if op.scope}
    return frozenset(n.rsplit(".", k)[0] for n in names for k in range(n.count(".") + 1))


def _scoped(base: str, op: Op) -> str:
    return f"{base}.{op.scope}" if op.scope and base != "<root>" else (op.scope or base)


def _layout_findings(base: str, cand: _Side, ref: _Side, c_lo: int, c_hi: int, r_lo: int, r_hi: int,
                     before: str, agreed: tuple[Op, Op] | None = None) -> list[dict]:
    """Differences among the layout ops feeding the first diverging op (a missing transpose...);
    ``agreed``: the last pair of ops that agree, at ``c_lo`` and ``r_lo``."""
    cl, rl = _layout_between(cand, c_lo, c_hi), _layout_between(ref, r_lo, r_hi)
    if agreed is not None:  # the agreeing values as each side holds them when the layout ops read them
        c_value, r_value = cand.rec.value(agreed[0].out_ids[0], c_hi), ref.rec.value(agreed[1].out_ids[0], r_hi)
        cl, rl = _past_native(cl, r_value), _past_native(rl, c_value)
    if c_hi < len(cand.rec.ops) and r_hi < len(ref.rec.ops):
        # the ops by which one side already holds what the other's diverging op receives agree
        # with the other's, whatever each spells and wherever the other runs them (a caller):
        # the difference is in those after them (a transpose added after the reshape both do)
        c_in, r_in = _input_value(cand, cand.rec.ops[c_hi]), _input_value(ref, ref.rec.ops[r_hi])
        cl, rl = _past_native(cl, r_in), _past_native(rl, c_in)
    sm = difflib.SequenceMatcher(None, [o.name for o in cl], [o.name for o in rl], autojunk=False)
    moves = (lambda code: code[0] != "equal" and (any(o.name in _MOVING for o in cl[code[1]:code[2]])
                                                  != any(o.name in _MOVING for o in rl[code[3]:code[4]])))
    for tag, i1, i2, j1, j2 in sorted(sm.get_opcodes(), key=lambda code: not moves(code)):
        if tag == "equal":
            for c, r in zip(cl[i1:i2], rl[j1:j2]):
                found = _argument_findings(_scoped(base, c), c, r) or _joined_otherwise(_scoped(base, c), c, r,
                                                                                        cand, ref)
                if found:
                    return found
            continue
        extra, missing = cl[i1:i2], rl[j1:j2]
        # an op that moves values to other places (a cyclic shift) on one side only is the
        # difference, before any other and not the ops in its place (windows cut with unfold
        # against reshape and permute: spellings of one layout)
        moved_c, moved_r = [o for o in extra if o.name in _MOVING], [o for o in missing if o.name in _MOVING]
        if moved_r and not moved_c:
            extra = []
        elif moved_c and not moved_r:
            extra = moved_c
        if extra:
            op = extra[0]
            module = _scoped(base, op)
            return [_finding(module, "extra_op", op.name, None, op.name, None,
                             f"{module}: extra {op.name}{_layout_args(op)} in the candidate before {before}; "
                             f"the reference has none")]
        op = (moved_r or missing)[0]
        module, who = _scoped(base, op), "the reference"
        if op.scope and op.scope not in _scopes(cand.rec):
            # a submodule of the reference's the candidate does not have is no place in it
            module, who = base, f"the reference's {module}"
        return [_finding(module, "missing_op", op.name, None, None, op.name,
                         f"{module}: {op.name}{_layout_args(op)} missing in the candidate before {before}; "
                         f"{who} applies it")]
    return []


def _joined_otherwise(module: str, c: Op, r: Op, cand: _Side, ref: _Side) -> list[dict]:
    """A join (``cat``, ``stack``) of the reference's operands in another order: a unit returning
    ``cat([right, left])`` where the reference returns ``cat([left, right])``. Each operand is known by
    the reference's operand it holds; a join whose operands differ in value is no reordering."""
    cv = [cand.rec.passed(i, c.index) for i in c.input_ids]
    rv = [ref.rec.passed(i, r.index) for i in r.input_ids]
    if c.name not in _JOINS or len(cv) != len(rv) or len(cv) < 2 or any(t is None for t in (*cv, *rv)):
        return []
    held = [next((j for j, b in enumerate(rv) if a.shape == b.shape and _close(a, b)), None) for a in cv]
    if None in held or sorted(held) != list(range(len(rv))) or held == sorted(held):
        return []
    moved = ", ".join(f"operand {i} holds the reference's operand {j}" for i, j in enumerate(held) if i != j)
    text = f"{module}: {c.name} joins the reference's operands in another order: {moved}"
    return [_finding(module, "op", c.name, _JOINED, f"order {held}", f"order {sorted(held)}", text)]


_JOINS = frozenset({"cat", "stack", "hstack", "vstack", "dstack", "column_stack"})
_JOINED = "tensors"  # the argument of a join's finding: its operands, as a list
_MOVING = frozenset({"roll", "flip"})  # layout ops no reshape, permute or slice can stand for


def _past_native(ops: list[Op], value: torch.Tensor | None) -> list[Op]:
    """``ops`` after those that only bring a value into the layout in which the other side computes
    it (``value``; a convolution's map flattened into the tokens that a patch embedding as unfold
    and a product writes directly): not a difference."""
    for k in range(len(ops), 0, -1):
        out = ops[k - 1].outputs[0] if ops[k - 1].outputs else None
        if value is not None and out is not None and all(op.name in _RELAYOUT for op in ops[:k]) and _close(value, out):
            return ops[k:]
    return ops


def _layout_args(op: Op) -> str:
    return "(" + ", ".join(f"{k}={_show(v)}" for k, v in op.args.items()) + ")" if op.args else ""


def _inputs_differ(c: Op, r: Op, cand: _Side, ref: _Side, tol: Tolerance) -> bool:
    cv = [cand.rec.value(i, c.index) for i in c.input_ids]
    rv = [ref.rec.value(i, r.index) for i in r.input_ids]
    if len(cv) != len(rv):
        return True
    if c.name in _COMMUTATIVE:  # x + shortcut against shortcut + x
        key = (lambda t: (t is None, tuple(t.shape) if t is not None else ()))
        cv, rv = sorted(cv, key=key), sorted(rv, key=key)
    for a, b in zip(cv, rv):
        if a is None and b is None:
            continue  # both the module's own inputs: the same values on both sides
        if a is None or b is None or not _outputs_agree([a], [b], tol):
            return True
    return False


def _computed_inputs(c: Op, r: Op, cand: _Side, ref: _Side) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The first input of each op of a pair as an op before it computed it (None for a module's own
    input, which is the same on both sides)."""
    return (cand.rec.value(c.input_ids[0], c.index) if c.input_ids else None,
            ref.rec.value(r.input_ids[0], r.index) if r.input_ids else None)


def _relaid_input(c: Op, r: Op, cand: _Side, ref: _Side) -> str | None:
    """How the first input of a diverging pair is laid out otherwise than its twin's, where the two
    hold the same values only through an adapter (a map with H and W exchanged, for a conv that
    reads them as they lie): the candidate's and the reference's shapes, and the adapter."""
    a, b = _computed_inputs(c, r, cand, ref)
    if a is None or b is None or a.shape == b.shape:
        return None
    adapter = find_adapter(a, b, remember=False)
    if adapter is None or not _close(adapter.apply(a), b):
        return None
    return f"{tuple(a.shape)} against {tuple(b.shape)} ({adapter.description} brings it back)"


def _rearranged_input(module: str, c: Op, r: Op, cand: _Side, ref: _Side, tol: Tolerance,
                      base: str | None = None) -> list[dict]:
    """A diverging op whose input holds the reference's values in another order along some axes:
    blocks exchanged (a patch merging's slices concatenated in another order), a roll, a flip; in
    the reference's layout where it receives another (windows put back each transposed)."""
    how, through = _reordering_in_a_layout(*_computed_inputs(c, r, cand, ref), tol)
    text = f"{module}: {c.name} receives the reference's values in another order{through}: {how}"
    if not how:
        return []
    return _join_reordered(base or module, c, r, cand, ref, tol) + [_finding(module, "op", c.name, None, None, None, text)]


def _regrouped_input(module: str, c: Op, r: Op, cand: _Side, ref: _Side, tol: Tolerance,
                     agreed: tuple[Op, Op] | None) -> list[dict]:
    """A diverging op whose input holds, as its twin's does, the vectors of the last agreeing op's
    result (its channels), gathered at other places of it than the twin's, which no reordering
    axis by axis gives (windows cut as a grid, the pixels of each patch folded back transposed):
    the layout ops before it, each side spelling its own, are that difference, said as the steps
    each input takes through that result along its axes."""
    a, b = _computed_inputs(c, r, cand, ref)
    source = ref.rec.value(agreed[1].out_ids[0], r.index) if agreed is not None and agreed[1].out_ids else None
    if a is None or b is None or source is None or a.numel() != b.numel() or a.numel() != source.numel() \
            or not (a.is_floating_point() and source.is_floating_point()) or source.ndim < 2:
        return []
    if a.shape != b.shape:  # windows as (B*nW, N, C) against (B*nW, ws, ws, C): said in the reference's
        if a.shape[-1] != b.shape[-1]:
            return []
        a = a.reshape(b.shape)
    mine, theirs = _steps_through(a, source, tol), _steps_through(b, source, tol)
    if mine is None or theirs is None or mine == theirs or mine.keys() != theirs.keys():
        return []
    moved = "; ".join(f"along dim {d}, by {mine[d]} where the reference's steps by {theirs[d]}"
                      for d in sorted(mine) if theirs[d] != mine[d])
    differ = [d for d in sorted(mine) if theirs[d] != mine[d]]
    if len(differ) == 2 and mine[differ[0]] == theirs[differ[1]] and mine[differ[1]] == theirs[differ[0]]:
        moved += f" (dims {differ[0]} and {differ[1]} transposed)"
    axes = ", ".join(str(d) for d, n in enumerate(source.shape[:-1]) if n > 1)
    text = (f"{_scoped(module, c)}: {c.name} receives the vectors of {agreed[0].name}'s result "
            f"({_scoped(module, agreed[0])}) reordered, gathered at other places than the reference's: its "
            f"input steps through that result (at the reference's dims {axes}) {moved}")
    return [_finding(_scoped(module, c), "op", c.name, None, None, None, text)]


_PART_OFFSETS = 8  # positions a part may be offset by in its whole: a class token and registers kept apart


def _part_of(c: Op, r: Op, tol: Tolerance) -> tuple[int, int] | None:
    """Whether ``c`` computes a part of what ``r`` computes, positions along one dim (the patch
    tokens' sum with their positions, where the reference adds the table to the class token
    too): that dim and the offset of the part, else None."""
    if not c.outputs or not r.outputs or c.shape == r.shape:
        return None
    return _narrowed_at(c.outputs[0], r.outputs[0], tol)


def _parts_apart(c: Op, cs: list[Op]) -> bool:
    """Whether another op of ``c``'s name reads a parameter ``c`` reads (the class token's row of
    the position table, added on its own): the rest of what ``c`` computes a part of is computed
    apart, not left out (a table's row that never reaches its add)."""
    read = set(c.params.values())
    return any(op is not c and op.name == c.name and read & set(op.params.values()) for op in cs)


def _narrowed_at(part: torch.Tensor | None, whole: torch.Tensor | None, tol: Tolerance) -> tuple[int, int] | None:
    """(dim, offset) at which ``part`` holds ``whole`` narrowed along the one dim their sizes differ
    in (where one of the two parts, it or the rest, is at most ``_PART_OFFSETS`` long), else None."""
    if part is None or whole is None or part.ndim != whole.ndim or not part.is_floating_point() \
            or part.dtype != whole.dtype:
        return None
    dims = [d for d in range(part.ndim) if part.shape[d] != whole.shape[d]]
    if len(dims) != 1 or part.shape[dims[0]] > whole.shape[dims[0]] \
            or min(part.shape[dims[0]], whole.shape[dims[0]] - part.shape[dims[0]]) > _PART_OFFSETS:
        return None
    d, n = dims[0], part.shape[dims[0]]
    return next(((d, o) for o in range(whole.shape[d] - n + 1) if measure(part, whole.narrow(d, o, n)).passes(tol)),
                None)


def _part_operands(where: str, c: Op, r: Op, cand: _Side, ref: _Side, tol: Tolerance) -> list[dict]:
    """A pair of which ``c`` computes a part of ``r``'s result, its input holding that part of
    ``r``'s input, where a parameter operand holds another part of ``r``'s (a position table sliced
    one row off): that operand, the part it holds and the part the reference passes there."""
    a, b = _computed_inputs(c, r, cand, ref)
    at = _narrowed_at(a, b, tol)
    if at is None:
        return []
    d, o = at
    for key, mine in c.operands.items():
        theirs = r.operands.get(key)
        if theirs is None or mine.ndim != theirs.ndim or d >= mine.ndim or mine.shape[d] != a.shape[d] \
                or theirs.shape[d] != b.shape[d] or measure(mine, theirs.narrow(d, o, mine.shape[d])).passes(tol):
            continue
        held = _narrowed_at(mine, theirs, tol)
        n = mine.shape[d]
        index = lambda start: "[" + ", ".join([":"] * d + [f"{start}:{start + n}"]) + "]"
        holds = f"the reference's {r.params.get(key, key)}{index(held[1])}" if held else "other values"
        text = (f"{where}: {c.name} computes the reference's {index(o)} (its input holds the reference's "
                f"there), its operand {c.params.get(key, key)} holding {holds}, where the reference passes "
                f"{index(o)}")
        return [_finding(where, "argument", c.name, key, index(held[1]) if held else None, index(o), text)]
    return []


def _steps_through(x: torch.Tensor, source: torch.Tensor, tol: Tolerance) -> dict[int, tuple[int, ...]] | None:
    """Where ``x`` holds the vectors along ``source``'s last axis (one axis of ``x``, of that size,
    holds them): for each other axis of ``x``, the step in ``source``'s coordinates (its axes of
    size 1 left out) from the first element along it to the next; None where ``x`` holds other values."""
    k = source.shape[-1]
    rows = source.detach().double().reshape(-1, k)
    probe = torch.linspace(1.0, 2.0, k, dtype=torch.float64)
    at = torch.argsort(rows @ probe)
    for f in sorted((d for d in range(x.ndim) if x.shape[d] == k), key=lambda d: d != x.ndim - 1):
        held = x.detach().double().movedim(f, -1)
        mine = held.reshape(-1, k)
        order = torch.argsort(mine @ probe)
        place = torch.empty_like(order)
        place[order] = at  # row i of x is source row place[i], where the two sort alike
        if not measure(mine, rows[place]).passes(tol):
            continue
        lead, kept = held.shape[:-1], tuple(n for n in source.shape[:-1] if n > 1)
        coords = torch.unravel_index(place, kept) if kept else ()
        axes = [d for d in range(x.ndim) if d != f]
        # the row-major index of the element one step along each axis, against the first's
        return {d: tuple(int(c[math.prod(lead[i + 1:])] - c[0]) for c in coords)
                for i, d in enumerate(axes) if lead[i] > 1}
    return None


def _join_reordered(module: str, c: Op, r: Op, cand: _Side, ref: _Side, tol: Tolerance) -> list[dict]:
    """Where the reordered input of ``c`` (``module``: the streams' module) is made by a join of as many operands as ``r``'s, each
    holding one of the reference's operands in another place: that join's operand order, the
    cause the reordering only shows (branches concatenated in another order before a fuse)."""
    joins = _join_before(cand.rec, c), _join_before(ref.rec, r)
    if None in joins or len(joins[0].input_ids) != len(joins[1].input_ids):
        return []
    mine, theirs = _join_operands(cand.rec, joins[0]), _join_operands(ref.rec, joins[1])
    order = []
    for a in mine:
        held = [j for j, b in enumerate(theirs) if a is not None and b is not None and _outputs_agree([a], [b], tol)]
        if len(held) != 1:
            return []
        order.append(held[0])
    if order == sorted(order) or len(set(order)) != len(order):
        return []
    moved = ", ".join(f"operand {i} holds the reference's operand {j}" for i, j in enumerate(order) if i != j)
    module = _scoped(module, joins[0])  # the module running the join
    text = f"{module}: {joins[0].name} joins its operands in another order than the reference's: {moved}"
    return [_finding(module, "argument", joins[0].name, _JOINED, order, sorted(order), text)]


def _join_operands(rec: OpRecorder, join: Op) -> list[torch.Tensor | None]:
    """The tensors a join joins, in order; one no op computed (a register token, a parameter
    joined to the activations) read from the joined result, the part the others leave."""
    parts = [rec.passed(i, join.index) for i in join.input_ids]
    dim, out = join.args.get("dim", 0), join.outputs[0] if join.outputs else None
    if out is None or parts.count(None) != 1 or join.name not in ("cat", "stack") or not isinstance(dim, int):
        return parts
    k = parts.index(None)
    if join.name == "stack":
        parts[k] = out.select(dim, k)
        return parts
    sizes = [p.shape[dim] if p is not None else 0 for p in parts]
    start, n = sum(sizes[:k]), out.shape[dim] - sum(sizes)
    parts[k] = out.narrow(dim, start, n) if n > 0 else None
    return parts


def _join_before(rec: OpRecorder, op: Op) -> Op | None:
    """The join (``cat``, ``stack``) whose result ``op``'s first input holds, through layout ops."""
    at = rec.producer(op.input_ids[0], op.index) if op.input_ids else None
    while at is not None and at.name not in _JOINS and at.kind != "compute" and at.input_ids:
        at = rec.producer(at.input_ids[0], at.index)
    return at if at is not None and at.name in _JOINS else None


def _rearranged_output(module: str, cand: _Side, ref: _Side, tol: Tolerance) -> list[dict]:
    """A module whose every op agrees, returning the reference's values in another order (branches
    concatenated in another order)."""
    for (key, a), b in zip(cand.output.items(), ref.output.values()):
        how, through = _reordering_in_a_layout(a, b, tol)
        if how:
            leaf = f" ({key})" if key else ""
            return [_finding(module, "op", None, None, None, None,
                             f"{module}: returns the reference's values in another order{leaf}{through}: {how} "
                             f"(its operations compute what the reference's do)")]
    return []


_LAYOUTS_TRIED = 32  # layouts of another shape in which a returned value is searched for a reordering


def _reordering_in_a_layout(a: torch.Tensor | None, b: torch.Tensor | None, tol: Tolerance) -> tuple[str | None, str]:
    """:func:`_reordering` of ``a`` and ``b``, as they are or, where their shapes differ, through a
    layout bringing ``a`` to ``b``'s shape (a window partition: each window's tokens transposed),
    with that layout in words (``" (through ...)"``)."""
    if a is None or b is None or a.shape == b.shape or a.numel() != b.numel() or not a.is_floating_point():
        return _reordering(a, b, tol), ""
    for adapter in layouts(a, tuple(b.shape), _LAYOUTS_TRIED):
        if how := _reordering(adapter.apply(a), b, tol):
            return how, f" (through {adapter.description})"
    return None, ""


def _reordering(a: torch.Tensor | None, b: torch.Tensor | None, tol: Tolerance) -> str | None:
    """:func:`rearrangement` of two tensors of one shape in words, axis by axis; None if there is none."""
    if a is None or b is None or a.shape != b.shape or not a.is_floating_point():
        return None
    return "; ".join(f"along dim {d}, {text}" for d, text in rearrangement(a, b, tol)) or None


def rearrangement(candidate: torch.Tensor, reference: torch.Tensor, tol: Tolerance) -> list[tuple[int, str]]:
    """How ``candidate`` holds ``reference``'s values reordered along its axes, each axis on its own
    (a cyclic shift of rows and columns, blocks of channels exchanged): [(dim, description)], or []
    when no such reordering gives the reference within ``tol``.

    Each position along an axis is known by its slice's largest and smallest value and its sum,
    which do not change when the other axes are reordered (:func:`_pairing`); sorting both sides by
    them pairs the positions, and the reference reordered by every pairing found must then agree
    with the candidate. An axis whose pairing moves only slices holding one value (rows of zeros)
    is said nothing of: any order of it gives the reference. Where the pairings found together do not
    give it, one axis reordered alone may (relative offsets on a grid with x and y exchanged: many
    tokens look alike, and their pairing moves them for nothing)."""
    a, b = candidate.detach().double(), reference.detach().double()
    orders: list[tuple[int, torch.Tensor]] = []
    for d, n in enumerate(a.shape):
        if n < 2:
            continue
        order = _pairing(a, b, d, tol)
        if order is None:
            return []
        # an order moving only slices that hold one value (rows of zeros) changes nothing: no claim
        if not torch.equal(order, torch.arange(n)) and not torch.equal(b.index_select(d, order), b):
            orders.append((d, order))
    reordered = b
    for d, order in orders:
        reordered = reordered.index_select(d, order)
    if not measure(a, reordered).passes(tol):
        return _one_axis_reordered(a, b, tol)
    return [(d, _moves_text(order.tolist())) for d, order in orders]


_TIED_ORDERS = 120  # pairings of look-alike slices tried along one axis


def _untied_in_one_pass(order: list[int], features: list[tuple], tied: list[int]) -> list[int]:
    """:func:`_untied` for many ties (half the channels of a map after a ReLU, dead at one pixel):
    each tied position, in order, takes the place the run of its nearest untied neighbour leads to
    (the other side's next), where a look-alike is still free; the rest as sorted."""
    n, fixed = len(order), set(range(len(order))) - set(tied)
    left_run, right_run = _nearest_runs(order, fixed, range(n)), _nearest_runs(order, fixed, range(n - 1, -1, -1))
    taken, out = set(order[i] for i in fixed), list(order)
    rest = []
    for i in tied:
        want = features[order[i]]
        runs = sorted((abs(i - k), order[k] - k) for k in (left_run[i], right_run[i]) if k is not None)
        j = next((i + off for _, off in runs if 0 <= i + off < n and i + off not in taken and features[i + off] == want),
                 None)
        if j is None:
            rest.append(i)
            continue
        out[i] = j
        taken.add(j)
    spare = [j for j in (order[i] for i in tied) if j not in taken]
    for i in rest:  # look-alikes no run claims, in sorted order
        j = next(k for k in spare if features[k] == features[order[i]])
        spare.remove(j)
        out[i] = j
    return out


def _nearest_runs(order: list[int], fixed: set[int], walk: Iterable[int]) -> list[int | None]:
    """For each position, the nearest fixed position met walking ``walk`` up to it (None before
    the first)."""
    runs, last = [None] * len(order), None
    for i in walk:
        last = i if i in fixed else last
        runs[i] = last
    return runs


def _one_axis_reordered(a: torch.Tensor, b: torch.Tensor, tol: Tolerance) -> list[tuple[int, str]]:
    """``b`` reordered along one axis alone into ``a``, look-alike slices paired every way (channels
    holding the same values, x and y offsets of a grid, exchanged), where few are alike; [] if none."""
    for d in range(a.ndim):
        for order in _tied_pairings(a, b, d):
            if not torch.equal(order, torch.arange(a.shape[d])) and measure(a, b.index_select(d, order)).passes(tol):
                return [(d, _moves_text(order.tolist()))]
    return []


def _tied_pairings(a: torch.Tensor, b: torch.Tensor, d: int) -> Iterable[torch.Tensor]:
    """Each pairing of ``a``'s positions along ``d`` with ``b``'s whose slices look alike
    (:func:`_slice_features`), while they are few (:data:`_TIED_ORDERS`)."""
    a_features, b_features = _slice_features(a, d), _slice_features(b, d)
    if sorted(a_features) != sorted(b_features):
        return
    groups = [([i for i, f in enumerate(a_features) if f == g], [j for j, f in enumerate(b_features) if f == g])
              for g in dict.fromkeys(a_features)]
    if math.prod(math.factorial(len(mine)) for mine, _ in groups) > _TIED_ORDERS:
        return
    for choice in itertools.product(*(itertools.permutations(theirs) for _, theirs in groups)):
        order = torch.empty(a.shape[d], dtype=torch.long)
        for (mine, _), theirs in zip(groups, choice):
            order[list(mine)] = torch.tensor(theirs, dtype=torch.long)
        yield order


def _slice_features(t: torch.Tensor, d: int) -> list[tuple[float, float, float]]:
    """Each position along ``d`` known by its slice's largest and smallest value and its sum."""
    others = [k for k in range(t.ndim) if k != d]
    high, low, total = (t.amax(others), t.amin(others), t.sum(others)) if others else (t, t, t)
    return list(zip(high.tolist(), low.tolist(), total.tolist()))


def _pairing(a: torch.Tensor, b: torch.Tensor, d: int, tol: Tolerance = _EXACT) -> torch.Tensor | None:
    """For each position of ``a`` along ``d``, the position of ``b`` holding the same slice values,
    whatever their order inside the slice: known by the slice's largest and smallest value (exact
    under any reordering) and its sum; None where the slices of the two differ by more than ``tol``
    (values computed on two sides agree to rounding only)."""
    others = [k for k in range(a.ndim) if k != d]
    # a vector's positions are its values (a reduction over no dims would reduce over all)
    (a_high, a_low, a_sum), (b_high, b_low, b_sum) = (((t.amax(others), t.amin(others), t.sum(others)) if others
                                                       else (t, t, t)) for t in (a, b))
    a_features = list(zip(a_high.tolist(), a_low.tolist(), a_sum.tolist()))
    b_features = list(zip(b_high.tolist(), b_low.tolist(), b_sum.tolist()))
    pairing = torch.empty(a.shape[d], dtype=torch.long)
    pairing[torch.tensor(sorted(range(a.shape[d]), key=a_features.__getitem__))] = \
        torch.tensor(sorted(range(b.shape[d]), key=b_features.__getitem__))
    pairing = torch.tensor(_untied(pairing.tolist(), b_features))
    same = all(torch.equal(mine, paired := theirs.index_select(0, pairing)) or measure(mine, paired).passes(tol)
               for mine, theirs in ((a_high, b_high), (a_low, b_low)))
    return pairing if same else None


_UNTIED_MOST = 128  # tied positions given out so that runs continue; beyond, paired as sorted


def _untied(order: list[int], features: list[tuple]) -> list[int]:
    """``order`` with the reference positions whose slices look alike (``features``: dead channels,
    all zero) given out so that runs continue: ties are paired in any order, which would break a
    block moved whole into pieces. A tied position takes the place its nearest untied neighbours'
    runs lead to, where one of its look-alikes is there; the most constrained first."""
    n, counts = len(order), Counter(features)
    tied = [i for i in range(n) if counts[features[order[i]]] > 1]
    if not tied:
        return order
    if len(tied) > _UNTIED_MOST:  # the search below grows with the cube of the ties
        return _untied_in_one_pass(order, features, tied)
    free = {order[i] for i in tied}
    fixed = set(range(n)) - set(tied)

    def leads(i: int) -> list[int]:
        out = []
        for step in (-1, 1):
            k = i + step
            while 0 <= k < n and k not in fixed:
                k += step
            j = i + order[k] - k if 0 <= k < n else -1
            if j in free and features[j] == features[order[i]] and j not in out:
                out.append(j)
        return out

    left = list(tied)
    while left:
        i = min(left, key=lambda p: (len(leads(p)) or n + 1, p))
        options = leads(i) or sorted(j for j in free if features[j] == features[order[i]])
        order[i] = options[-1] if len(options) > 1 else options[0]
        free.discard(order[i])
        fixed.add(i)
        left.remove(i)
    return order


def _moves_text(order: list[int]) -> str:
    """``order[i]``: the reference's position that position ``i`` holds, said as a person would."""
    n, shift = len(order), order[0]
    if all(order[i] == (i + shift) % n for i in range(n)):
        by = -shift if shift <= n // 2 else n - shift
        return f"rolled by {by} (torch.roll of the reference's by {by})"
    if order == list(range(n - 1, -1, -1)):
        return "reversed"
    if side := _transposed_grid(order):
        return (f"transposed as a {side}x{side} grid (position row * {side} + column holds the reference's "
                f"column * {side} + row)")
    runs, start = [], 0
    for i in range(1, n + 1):
        if i == n or order[i] != order[i - 1] + 1:
            if order[start] != start:
                runs.append(f"[{start}:{i}] holds the reference's [{order[start]}:{order[i - 1] + 1}]")
            start = i
    if len(runs) > 4:
        return f"{sum(o != i for i, o in enumerate(order))} of {n} positions hold another position's values"
    return ", ".join(runs)


def _transposed_grid(order: list[int]) -> int | None:
    """The side ``s`` of a square grid whose flattened positions ``order`` transposes (a window's
    tokens read column by column), or None."""
    side = math.isqrt(len(order))
    if side < 2 or side * side != len(order):
        return None
    return side if all(order[i * side + j] == j * side + i for i in range(side) for j in range(side)) else None


_OPERANDS = {"scaled_dot_product_attention": ("query", "key", "value"), "matmul": ("input", "other"),
             "sub": ("input", "other"), "div": ("input", "other")}


def _swapped_inputs(module: str, c: Op, r: Op, cand: _Side, ref: _Side, tol: Tolerance) -> list[dict]:
    """Operands passed in another order: the candidate's ``key`` holds the reference's ``query``."""
    names = _OPERANDS.get(c.name)
    cv = [cand.rec.value(i, c.index) for i in c.input_ids]
    rv = [ref.rec.value(i, r.index) for i in r.input_ids]
    if names is None or len(cv) != len(rv) or len(cv) > len(names) or any(t is None for t in (*cv, *rv)):
        return []

    def agree(a: torch.Tensor, b: torch.Tensor) -> bool:
        # heads folded into the batch ((batch * heads, tokens, head size)) on one side only: one reshape apart
        return a.numel() == b.numel() and _outputs_agree([a.reshape(b.shape)], [b], tol)

    def transposed(a: torch.Tensor, b: torch.Tensor) -> bool:
        # a product's operands exchanged with the transpose each is read through (``k @ q^T``
        # where the reference computes ``q @ k^T``): one holds the other's, its last two dims exchanged
        return c.name == "matmul" and a.ndim >= 2 and agree(a.transpose(-1, -2), b)

    for i, a in enumerate(cv):
        if agree(a, rv[i]):
            continue
        j = next((j for j, b in enumerate(rv) if j != i and agree(a, b)), None)
        how = ""
        if j is None and (j := next((j for j, b in enumerate(rv) if j != i and transposed(a, b)), None)) is not None:
            how = " transposed"
        if j is not None:
            text = (f"{module}: {c.name} operand {names[i]} holds the reference's {names[j]}{how} "
                    f"(operands passed in another order?)")
            return [_finding(module, "argument", c.name, names[i], names[j], names[i], text)]
    return []


def _other_part(module: str, c: Op, r: Op, cand: _Side, ref: _Side, tol: Tolerance) -> list[dict]:
    """An input that holds another part of what the reference splits (a split, chunk or unbind of a
    fused projection) than the part the reference passes there: key and value slices taken in
    another order, in an attention of any form (``k * softmax(q)`` as much as a fused call)."""
    cv = [cand.rec.value(i, c.index) for i in c.input_ids]
    found = _part_taken_for(ref.rec, r, cv, lambda a, part: _outputs_agree([a], [part], tol, same_shape=True),
                            lambda a, part: _holds(a, part, tol))
    if found is not None:
        parts, k, j = found
        n = len(parts.outputs)
        text = (f"{module}: {c.name} receives part {j + 1} of the {n} the reference's {parts.name} makes, "
                f"where the reference passes part {k + 1}: parts taken in another order (swapped?)")
        return [_finding(module, "argument", c.name, "input", f"part {j + 1} of {n}", f"part {k + 1} of {n}", text)]
    return _own_other_part(module, c, r, cand, ref, tol)


def _other_source(module: str, c: Op, r: Op, cand: _Side, ref: _Side, tol: Tolerance, ref_base: str) -> list[dict]:
    """An input holding what another computing op of the reference gives than the one whose result
    the reference's op reads (through layout ops): a SwiGLU's activation applied to the up
    projection where the reference applies it to the gate, the two halves swapped; or where the
    reference's op reads the module's own input (a position added to the value's input too)."""
    for c_id, r_id in zip(c.input_ids, r.input_ids):
        a, b = cand.rec.value(c_id, c.index), ref.rec.passed(r_id, r.index)
        own = _source(ref.rec, r_id, r.index)
        if a is None or b is None or (own is None and r_id not in ref.rec.given) or _outputs_agree([a], [b], tol):
            continue
        before = _upstream(ref.rec, own) if own is not None else set()  # a missing op's input
        other = next((op for op in reversed(ref.rec.ops[:r.index]) if op.kind == "compute" and op is not own
                      and op.index not in before and any(_outputs_agree([a], [o], tol) for o in op.outputs)), None)
        if other is not None:
            reads, why = (f"what its {_producer_text(ref_base, own)} gives", "the two swapped?") if own is not None \
                else ("the module's input", f"{other.name} applied to it too?")
            text = (f"{module}: {c.name} reads what the reference's {_producer_text(ref_base, other)} gives, where "
                    f"the reference's {r.name} reads {reads} ({why})")
            return [_finding(module, "argument", c.name, "input", _scoped(ref_base, other),
                             _scoped(ref_base, own) if own is not None else "input", text)]
    return []


def _step_skipped(module: str, c: Op, r: Op, cand: _Side, ref: _Side, tol: Tolerance, ref_base: str,
                  cand_base: str) -> list[dict]:
    """An input holding what the reference's op reads before a step the candidate runs too: a
    layer reading a norm's input where the reference's reads its output (a pre-norm block's MLP
    fed the residual stream, the norm's result read elsewhere or nowhere). :func:`_other_source`
    passes over the ops upstream of what the reference's op reads, as a missing op's input would
    hold their values; here the candidate computes that value itself, so no op is missing."""
    for c_id, r_id in zip(c.input_ids, r.input_ids):
        a, b, own = cand.rec.passed(c_id, c.index), ref.rec.passed(r_id, r.index), _source(ref.rec, r_id, r.index)
        if a is None or b is None or own is None or not own.outputs or _outputs_agree([a], [b], tol) \
                or _computing(cand.rec, own.outputs[0], tol) is None:
            continue
        step = _reader_of(ref.rec, own, a, tol)
        if step is None:
            continue
        mine = _computing(cand.rec, step.outputs[0], tol) if step.outputs else None
        named = f"{_scoped(cand_base, mine)} ({mine.name}; the reference's {_scoped(ref_base, step)})" \
            if mine is not None and mine.scope else f"the reference's {_producer_text(ref_base, step)}"
        inside = step is own or step.scope and (own.scope + ".").startswith(step.scope + ".")
        reads = "its output" if inside else f"what the reference's {_producer_text(ref_base, own)} gives"
        text = f"{module}: {c.name} reads the input of {named}, where the reference's {r.name} reads {reads}"
        return [_finding(module, "argument", c.name, "input", f"input of {_scoped(ref_base, step)}",
                         _scoped(ref_base, own), text)]
    return []


def _computing(rec: OpRecorder, value: torch.Tensor, tol: Tolerance) -> Op | None:
    """The first op of ``rec`` that gives ``value`` (in any layout), or None."""
    return next((op for op in rec.ops if op.kind == "compute" and any(
        o.numel() == value.numel() and _outputs_agree([o], [value], tol) for o in op.outputs)), None)


def _reader_of(rec: OpRecorder, own: Op, value: torch.Tensor, tol: Tolerance) -> Op | None:
    """The op nearest ``own``, among those its result is computed by, whose input holds ``value``."""
    for index in sorted(_upstream(rec, own) | {own.index}, reverse=True):
        op = rec.ops[index]
        held = (rec.passed(i, index) for i in op.input_ids) if op.kind == "compute" else ()
        if any(t is not None and t.numel() == value.numel() and _outputs_agree([value], [t], tol) for t in held):
            return op
    return None


def _exchanged_factors(module: str, c: Op, r: Op, cand: _Side, ref: _Side, tol: Tolerance,
                       ref_base: str) -> list[dict]:
    """Two products joined by one add (or sub) that take each other's factors: ``g * content + (1 - g)
    * pos`` where the reference computes ``(1 - g) * content + g * pos`` (a gate's weights exchanged
    between the branches it mixes). Each factor is known by the reference's factor whose values it
    holds; every one agrees, only their grouping into the two products differs. The factors named
    exchanged are the smaller ones (the weights, not what they weigh)."""
    if c.name != "mul" or r.name != "mul":
        return []
    c_products, r_products = _joined_products(cand.rec, c), _joined_products(ref.rec, r)
    if c_products is None or r_products is None:
        return []
    cf = [f for p in c_products for f in _factors(cand.rec, p)]
    rf = [f for p in r_products for f in _factors(ref.rec, p)]
    if len(cf) != 4 or len(rf) != 4 or any(t is None for t in (*cf, *rf)):
        return []
    held = [[j for j, b in enumerate(rf) if a.numel() == b.numel() and _outputs_agree([a], [b], tol)] for a in cf]
    # a bijection in which the candidate's first product holds one factor of each of the reference's
    order = next((o for o in itertools.permutations(range(4)) if all(j in held[i] for i, j in enumerate(o))
                  and {o[0] // 2, o[1] // 2} == {0, 1}), None)
    if order is None or any(set(o[:2]) in ({0, 1}, {2, 3}) for o in itertools.permutations(range(4))
                            if all(j in held[i] for i, j in enumerate(o))):
        return []  # no crossing grouping, or the reference's own one holds too
    # the candidate's first product holds the reference's factors j and k (of the other product): it
    # multiplies j by k where the reference multiplies j by j's partner, k by j's partner where by k's
    j, k = order[:2]
    x, y = min(((k, j ^ 1), (j, k ^ 1)), key=lambda pair: rf[pair[0]].numel() + rf[pair[1]].numel())
    name = (lambda n: _factor_name(ref.rec, r_products[n // 2], n % 2, ref_base))
    join = _reader(ref.rec, r)
    text = (f"{module}: {join.name if join else 'add'} joins two products whose factors {name(x)} and {name(y)} are "
            f"exchanged: the candidate multiplies by {name(x)} what the reference multiplies by {name(y)}, and by "
            f"{name(y)} what it multiplies by {name(x)}")
    return [_finding(module, "argument", c.name, "input", name(x), name(y), text)]


def _crossed_operands(module: str, c: Op, r: Op, cs: list[Op], rs: list[Op], tol: Tolerance) -> list[dict]:
    """Two ops of one name reading one input, each with a parameter (a decomposed relative
    position's height and width tables), that take each other's: the pair ``c``/``r``, reading one
    tensor's values, stands in the other order among its siblings than the pair reading the other
    tensor's, and gives other results from the same arguments: each op of the candidate computes
    with the tensor the reference's other op reads."""
    siblings = (lambda op, stream: [o for o in stream if o is not op and o.name == op.name and o.params
                                    and sorted(o.input_ids) == sorted(op.input_ids)])
    if not c.params or not r.params:
        return []
    r_siblings = siblings(r, rs)
    for c2 in siblings(c, cs):
        r2 = next((o for o in r_siblings if (c2.index - c.index) * (o.index - r.index) < 0
                   and _same_operands_by_value(c2, o, tol)), None)
        if r2 is None:
            continue
        (c_first, c_second), (r_first, r_second) = sorted((c, c2), key=_index), sorted((r, r2), key=_index)
        names = (lambda op: ", ".join(op.params.values()))
        text = (f"{module}: the two {c.name}s reading one input take each other's operands: the candidate's first "
                f"reads {names(c_first)}, which holds the reference's {names(r_second)} (its second {r.name} reads "
                f"it), and its second {names(c_second)}, which holds {names(r_first)} (read by the first)")
        key = next(iter(c_first.params))
        return [_finding(module, "argument", c.name, key, names(c_first), names(r_first), text)]
    return []


def _index(op: Op) -> int:
    return op.index


def _same_operands_by_value(c: Op, r: Op, tol: Tolerance) -> bool:
    """Whether each parameter operand of ``c`` holds, as passed, the values of ``r``'s in its role."""
    pairs = _paired_params(c, r)
    if not pairs or len(pairs) != len(c.params) or len(pairs) != len(r.params):
        return False
    for key, r_key in pairs:
        passed = _in_one_layout(c.operands.get(key, c.param_values[key]), r.operands.get(r_key, r.param_values[r_key]),
                                as_passed=True)
        if passed is None or not _outputs_agree([passed[0]], [passed[1].to(passed[0].dtype)], tol):
            return False
    return True


def _joined_products(rec: OpRecorder, op: Op) -> list[Op] | None:
    """The two products, ``op`` one of them, that the add (or sub) reading ``op``'s result joins."""
    join = _reader(rec, op)
    if join is None or join.name not in ("add", "sub") or len(set(join.input_ids)) != 2 or join.params:
        return None
    products = [_source(rec, i, join.index) for i in join.input_ids]
    if any(p is None or p.name != "mul" for p in products) or all(p.index != op.index for p in products):
        return None
    return products


def _factors(rec: OpRecorder, product: Op) -> list[torch.Tensor | None]:
    """A product's two factors as it reads them: activations, else parameters as passed."""
    return [rec.passed(i, product.index) for i in product.input_ids] + list(product.operands.values())


def _factor_name(rec: OpRecorder, product: Op, slot: int, base: str) -> str:
    """Factor ``slot`` of ``product`` named by the op computing it (or the parameter it is)."""
    if slot < len(product.input_ids):
        source = _source(rec, product.input_ids[slot], product.index)
        return _producer_text(base, source) if source is not None else "the module's input"
    return list(product.params.values())[slot - len(product.input_ids)]


def _reader(rec: OpRecorder, op: Op) -> Op | None:
    """The computing op that first reads ``op``'s result, through layout ops."""
    made = set(op.out_ids)
    for later in rec.ops[op.index + 1:]:
        if not made & set(later.input_ids):
            continue
        if later.kind == "compute" and not later.absorbed:
            return later
        made |= set(later.out_ids)
    return None


def _producer_text(base: str, op: Op) -> str:
    return f"{_scoped(base, op)} ({op.name})" if op.scope else op.name


def _own_other_part(module: str, c: Op, r: Op, cand: _Side, ref: _Side, tol: Tolerance) -> list[dict]:
    """:func:`_other_part` where the candidate splits what the reference computes apart (a fused
    gate|up projection chunked, against gate and up projections): ``c`` receives one part of the
    candidate's split while the reference's input holds another part's values (halves swapped)."""
    rv = [ref.rec.value(i, r.index) for i in r.input_ids]
    part_holds = (lambda b, part: _holds(part, b, tol))
    found = _part_taken_for(cand.rec, c, rv, part_holds, part_holds)
    if found is None:
        return []
    parts, k, j = found
    n = len(parts.outputs)
    text = (f"{module}: {c.name} receives part {k + 1} of the {n} the candidate's {parts.name} makes, "
            f"where the reference passes the values of part {j + 1}: parts taken in another order (swapped?)")
    return [_finding(module, "argument", c.name, "input", f"part {k + 1} of {n}", f"part {j + 1} of {n}", text)]


def _part_taken_for(rec: OpRecorder, op: Op, others: list[torch.Tensor | None],
                    agrees: Callable[[torch.Tensor, torch.Tensor], bool],
                    holds: Callable[[torch.Tensor, torch.Tensor], bool]) -> tuple[Op, int, int] | None:
    """``(split, k, j)``: ``op`` (recorded by ``rec``) reads part ``k`` of ``split``, while one of
    the other side's ``others``, not agreeing with that part, holds part ``j`` of it instead
    (``agrees``/``holds`` take the other side's value, then the part)."""
    for i in op.input_ids:
        found = _split_part(rec, i, op.index)
        if found is None:
            continue
        parts, k = found
        for value in others:
            if value is None or agrees(value, parts.outputs[k]):
                continue
            j = next((j for j, part in enumerate(parts.outputs) if j != k and holds(value, part)), None)
            if j is not None:
                return parts, k, j
    return None


def _holds(a: torch.Tensor, b: torch.Tensor, tol: Tolerance) -> bool:
    """Whether ``a`` holds ``b``'s values, in any layout (a part transposed after the split) or
    reshaped (heads folded into the batch)."""
    return a.numel() == b.numel() and (_outputs_agree([a], [b], tol, same_shape=True)
                                       or _outputs_agree([a.reshape(b.shape)], [b], tol))


_PARTS = frozenset({"split", "chunk", "unbind", "tensor_split"})
_PART_VIEWS = 8  # layout ops followed back from an operand to the split it is a part of (reshape, permute...)


def _split_part(rec: OpRecorder, tensor_id: int, before: int) -> tuple[Op, int] | None:
    """The op splitting a tensor into parts (``qkv.split(...)``) that ``tensor_id`` is one of,
    through the layout ops after it, and which part."""
    for _ in range(_PART_VIEWS):
        op = rec.producer(tensor_id, before)
        if op is None or op.kind != "layout":
            return None
        if op.name in _PARTS and len(op.out_ids) > 1:
            return op, op.out_ids.index(tensor_id)
        if not op.input_ids:
            return None
        tensor_id, before = op.input_ids[0], op.index
    return None


_REORDER_WINDOW = 12  # stream positions searched for the twin of an op computed in another order


def _pair_agrees(c: Op, r: Op, tol: Tolerance) -> bool:
    """Same result, and no differing argument behind a result that merely rounds alike. A product
    writing its features on another axis than its twin's (a token-mixing einsum against a linear on
    the transposed tokens) may give them in another layout of one shape."""
    return _outputs_agree(c.outputs, r.outputs, tol, same_shape=c.features != r.features) and not (
        [f for f in _argument_findings("", c, r) if not _precision_only(f)] and not _identical(c.outputs, r.outputs))


def _narrowed(c: Op, r: Op, pending: list[dict]) -> bool:
    """Whether one side of the pair computes in float32 where the other does not (a softmax upcast to
    float32, the cast back pending): their results differ by float32's rounding."""
    return any(f.get("rounding") for f in pending) or any(_precision_only(f) for f in _argument_findings("", c, r))


def _float32_rounding(tol: Tolerance) -> Tolerance:
    """``tol`` widened to what a float32 computation inside a wider model rounds off, relative to the
    values' scale (:data:`_NARROWED_ULPS`): far below any error a port makes in its values."""
    rtol = _NARROWED_ULPS * torch.finfo(torch.float32).eps
    return Tolerance(atol=tol.atol, rtol=max(tol.rtol, rtol))


_NARROWED_ULPS = 64  # a float32 softmax's rounding, carried through the products after it


def _axes_exchanged(c: list[torch.Tensor], r: list[torch.Tensor], tol: Tolerance) -> bool:
    """Whether each result holds its twin's values with axes of one size exchanged, which no layout
    convention does (heads and tokens when there are as many of each: ``(B, N, H, D)`` against
    ``(B, H, N, D)``), and not as it is."""
    if len(c) != len(r) or not c:
        return False
    for a, b in zip(c, r):
        if a.shape != b.shape or not a.is_floating_point() or a.numel() < 2 or _outputs_agree([a], [b], tol):
            return False
        if not _close(a.flatten().sort().values, b.flatten().sort().values):
            return False  # not the same values in any order: nothing to try
        if not any(_outputs_agree([a.permute(*dims)], [b], tol) for dims in shape_permutations(a.shape, a.shape)):
            return False
    return True


def _value_twin(c: Op, rs: list[Op], pos: int, tol: Tolerance) -> Op | None:
    """A nearby reference op of the same name with the same result: ``x * cos + rot * sin`` spelled
    in another order pairs the two products crosswise by name alone."""
    for j in range(max(0, pos - _REORDER_WINDOW), min(len(rs), pos + _REORDER_WINDOW + 1)):
        r = rs[j]
        if j != pos and r.name == c.name and r.shape == c.shape and _pair_agrees(c, r, tol):
            return r
    return None


def _input_value(side: _Side, op: Op) -> torch.Tensor | None:
    return side.rec.passed(op.input_ids[0], op.index) if op.input_ids else None


def _fuse_siblings(side: _Side, other: _Side, tol: Tolerance, expected: Expected | None = None,
                   into_other: bool = False) -> list[Op]:
    """``side``'s stream with each run of one operation applied to one input by sibling modules
    (``q``, ``k`` and ``v`` projections) made one op, where ``other`` computes their concatenation
    in a single op (a fused ``qkv``) from the same input values or to the same result; joined in the
    order the weight map (``expected``: of ``side``'s parameters, or of ``other``'s where
    ``into_other``) gives their rows in the fused op."""
    stream, out, i, taken = side.stream, [], 0, set()
    while i < len(stream):
        if i in taken:
            i += 1
            continue
        j = i + 1
        while j < len(stream) and _sibling(stream[i], stream[j]):
            j += 1
        fused = _fused(stream[i:j], side, other, tol, expected, into_other) if j - i > 1 and stream[i].outputs \
            else None
        if fused is None and j == i + 1 and (groups := _group_run(stream, i, side)):
            # a grouped conv written one conv per group on the chunks of its input: one op, its
            # output the groups' joined in their order, the join the port writes after it apart
            j, fused = i + len(groups[0]), _fused_groups(*groups, side, other, expected, into_other)
            j = j if fused is not None else i + 1
        if fused is None and j == i + 1 and stream[i].outputs:
            # siblings apart (a SwiGLU's gate and up projections, the gate's activation between
            # them): fused where the other side computes them in one op, in the first one's place
            apart = [k for k in range(i + 1, len(stream)) if k not in taken and _sibling(stream[i], stream[k])]
            fused = _fused([stream[i], *(stream[k] for k in apart)], side, other, tol) if apart else None
            taken.update(apart if fused is not None else ())
        out.append(fused or stream[i])
        i = j if fused is not None else i + 1
    return out


_GROUPED = frozenset({"conv1d", "conv2d", "conv3d"})


def _group_run(stream: list[Op], i: int, side: _Side) -> tuple[list[Op], Op, torch.Tensor] | None:
    """The run of convs from ``stream[i]`` each reading the next of the channel chunks one split
    makes of one input, in order (one ``nn.Conv2d`` per group on ``x.chunk(g, 1)``), with that
    split and its input; None where ``stream[i]`` opens no such run of two or more."""
    first = stream[i]
    if first.name not in _GROUPED or not first.input_ids or "weight" not in first.param_values:
        return None
    part = _split_part(side.rec, first.input_ids[0], first.index)
    if part is None or part[1] != 0 or not part[0].input_ids or _split_dim(part[0], first.outputs[0].ndim) != 1:
        return None
    split, run = part[0], [first]
    for op in stream[i + 1:i + len(split.out_ids)]:
        at = _split_part(side.rec, op.input_ids[0], op.index) if op.name == first.name and op.input_ids else None
        if at is None or at[0] is not split or at[1] != len(run) or op.args != first.args \
                or "weight" not in op.param_values:
            break
        run.append(op)
    whole = side.rec.passed(split.input_ids[0], split.index)
    return (run, split, whole) if len(run) == len(split.out_ids) and len(run) > 1 and whole is not None else None


def _split_dim(split: Op, ndim: int) -> int | None:
    """The dim along which ``split`` cuts (``x.chunk(4, 1)``, ``torch.split(x, 8, dim=1)``), made
    non-negative; None where it is no plain dim."""
    d = split.args.get("dim", split.args.get("arg2", 0))
    return d % ndim if isinstance(d, int) and -ndim <= d < ndim else None


def _fused_groups(group: list[Op], split: Op, whole: torch.Tensor, side: _Side, other: _Side,
                  expected: Expected | None, into_other: bool) -> Op | None:
    """One grouped conv standing for ``group`` (per-group convs on the chunks of ``whole``), where
    ``other`` runs a conv of as many groups whose weight stacks theirs in the chunks' order (as the
    weight map puts them, where it says); None where it runs none."""
    groups = len(group) * group[0].args.get("groups", 1)
    for twin in other.stream:
        if twin.name != group[0].name or twin.args.get("groups") != groups or "weight" not in twin.param_values \
                or not _stacked_parameters(group, twin, expected, into_other):
            continue
        outs = [g.outputs[0] for g in group]
        if any(o.ndim != outs[0].ndim for o in outs):
            return None
        op = replace(_fused_op(group, torch.cat(outs, 1)), args={**group[0].args, "groups": groups},
                     input_ids=list(split.input_ids[:1]), spelling=f"{group[0].name} on {len(group)} chunks")
        join = _groups_join(side.rec, group, op.outputs[0])
        if join is None:
            return op
        join.absorbed = True  # the groups' join is the grouped conv's: its output, in the order it joins them
        order = tuple(next(k for k, g in enumerate(group) if i in g.out_ids) for i in join.input_ids)
        return replace(op, out_ids=list(join.out_ids), outputs=[join.outputs[0]], joined=order)
    return None


def _groups_join(rec: OpRecorder, group: list[Op], joined: torch.Tensor) -> Op | None:
    """The join of ``group``'s outputs along the channels, each once in any order (``torch.cat(ys,
    1)``), that the candidate writes right after them; None where it writes none."""
    outs = {i for g in group for i in g.out_ids}
    for op in rec.ops[group[-1].index + 1:]:
        if op.kind == "compute":
            return None
        if op.name == "cat" and not op.absorbed and len(op.input_ids) == len(group) \
                and set(op.input_ids) == outs and op.outputs and op.outputs[0].shape == joined.shape:
            return op
    return None


def _groups_joined(module: str, c: Op) -> list[dict]:
    """Per-group convs made one grouped conv whose join puts the groups in another order than the
    chunks of the input they read (``cat(ys[::-1])``): that join's order, each operand by its group."""
    if not c.joined or list(c.joined) == sorted(c.joined):
        return []
    scopes = [m[0] for m in c.members]
    moved = ", ".join(f"operand {i} holds group {k}" + (f" ({scopes[k]})" if scopes[k] else "")
                      for i, k in enumerate(c.joined) if i != k)
    text = (f"{module}: cat joins the outputs of the {len(c.joined)} per-group {c.name}s in another order than the "
            f"groups of the reference's grouped {c.name} (the chunks they read): {moved}")
    return [_finding(module, "argument", "cat", _JOINED, list(c.joined), sorted(c.joined), text)]


def _fuse_batched(stream: list[Op], other: list[Op], tol: Tolerance) -> list[Op]:
    """``stream`` with the calls of one op on several inputs (one encoder run on each of two frames)
    made one op, its output their outputs joined along the batch dim, where ``other`` computes that
    in one batched call: an op of that name whose output agrees with the join. Taken in order, the
    calls fused are consecutive among ``stream``'s ops of that name and output shape past the batch."""
    fused: dict[int, Op] = {}
    absorbed: set[int] = set()
    shapes = {(op.name, op.shape) for op in stream}
    for twin in other:
        out = twin.outputs[0] if twin.kind == "compute" and twin.outputs else None
        if out is None or out.ndim == 0 or (twin.name, tuple(out.shape)) in shapes:
            continue
        calls = [op for op in stream if op.name == twin.name and op.index not in absorbed and op.outputs
                 and op.outputs[0].ndim == out.ndim and op.shape[1:] == out.shape[1:] and op.shape[0] < out.shape[0]]
        for start in range(len(calls)):
            group = _batch_of(calls[start:], out.shape[0])
            if group and _outputs_agree([torch.cat([g.outputs[0] for g in group])], [out], tol):
                fused[group[0].index] = replace(group[0], spelling=f"{group[0].spelling} on {len(group)} inputs",
                                                outputs=[torch.cat([g.outputs[0] for g in group])],
                                                out_ids=[i for g in group for i in g.out_ids],
                                                input_ids=list(dict.fromkeys(i for g in group for i in g.input_ids)))
                absorbed.update(g.index for g in group)
                break
    return [fused.get(op.index, op) for op in stream if op.index in fused or op.index not in absorbed]


def _batch_of(calls: list[Op], size: int) -> list[Op]:
    """The first of ``calls`` whose batches sum to ``size``, or [] when they pass it."""
    group, total = [], 0
    for op in calls:
        group, total = group + [op], total + op.shape[0]
        if total >= size:
            break
    return group if total == size and len(group) > 1 else []


def _sibling(op: Op, other: Op) -> bool:
    """Whether ``other`` applies ``op``'s operation to ``op``'s inputs (another projection of one input)."""
    return other.name == op.name and bool(op.input_ids) and other.input_ids == op.input_ids and bool(other.outputs)


def _fused(group: list[Op], side: _Side, other: _Side, tol: Tolerance, expected: Expected | None = None,
           into_other: bool = False) -> Op | None:
    group = _in_mapped_order(group, other, expected, into_other)
    if not _one_kernel(group):
        return None  # a 3x3 conv and a 1x1 shortcut on one input: no single op computes both
    outs = [g.outputs[0] for g in group]
    x = _input_value(side, group[0])
    for dim in reversed(range(outs[0].ndim)):
        if any(o.ndim != outs[0].ndim or o.shape[:dim] + o.shape[dim + 1:] != outs[0].shape[:dim] + outs[0].shape[dim + 1:]
               for o in outs):
            continue
        cat = torch.cat(outs, dim)
        for twin in other.stream:
            # in any layout: nn.MultiheadAttention projects its input sequence-first
            if twin.name != group[0].name or not twin.outputs or twin.outputs[0].numel() != cat.numel():
                continue
            y = _input_value(other, twin)
            # one input is no proof alone: a later op reading it may merely have as many outputs
            same_input = x is not None and y is not None and x.numel() == y.numel() \
                and sorted(twin.outputs[0].shape) == sorted(cat.shape) and _outputs_agree([x], [y], tol)
            if same_input or _stacked_parameters(group, twin, expected, into_other) or _outputs_agree([cat], twin.outputs[:1], tol):
                return _fused_op(group, cat)
    return None


def _one_kernel(group: list[Op]) -> bool:
    """Whether ``group``'s parameters could be rows of one fused op's: each of one shape past its rows."""
    for key in {k for g in group for k in g.params}:
        shapes = {g.param_values[key].shape[1:] for g in group if key in g.param_values}
        if len(shapes) > 1:
            return False
    return True


def _in_mapped_order(group: list[Op], other: _Side, expected: Expected | None, into_other: bool = False) -> list[Op]:
    """``group`` (sibling projections) in the order of the rows the weight map gives each of a fused
    weight of ``other``'s (a port calling ``key``, ``value``, then ``query`` against ``qkv``'s query
    rows first; ``into_other``: the map fills ``other``'s fused weight from ``group``'s, a reference
    calling them so against the port's ``qkv``); as called when there is no map or it gives no such rows."""
    if expected is None or len(group) < 2:
        return group
    mapped = [g.param_values.get("weight") if into_other else expected(g.params["weight"]) if "weight" in g.params
              else None for g in group]
    if any(m is None for m in mapped):
        return group
    for twin in other.stream:
        fused = twin.param_values.get("weight")
        if into_other and fused is not None:  # where the map puts the reference's rows, not what the port holds
            fused = expected(twin.params["weight"])
        if twin.name != group[0].name or fused is None or fused.shape[0] != sum(m.shape[0] for m in mapped):
            continue
        starts = [_rows_at(m, fused) for m in mapped]
        if None not in starts and len(set(starts)) == len(starts):
            return [g for _, g in sorted(zip(starts, group), key=lambda pair: pair[0])]
    return group


def _rows_at(rows: torch.Tensor, fused: torch.Tensor) -> int | None:
    """Where ``rows`` sit in ``fused`` along dim 0 (bitwise, at ``fused``'s dtype), or None."""
    n = rows.shape[0]
    if rows.shape[1:] != fused.shape[1:]:
        return None
    rows = rows.to(device=fused.device, dtype=fused.dtype)
    return next((a for a in range(0, fused.shape[0] - n + 1, n) if torch.equal(fused[a:a + n], rows)), None)


def _stacked_parameters(group: list[Op], twin: Op, expected: Expected | None = None, into_other: bool = False) -> bool:
    """Whether ``twin``'s parameters are ``group``'s stacked, shape by shape (``qkv.weight`` for
    ``q``, ``k`` and ``v``'s), and, where the weight map says, its rows theirs: the pairing then holds
    through the weights, as the module alignment's does, whatever error the input already carries
    from upstream (``expected``, ``into_other``: as for :func:`_in_mapped_order`)."""
    keys = set(twin.params).intersection(*(g.params for g in group))  # a bias may be computed on one side
    for key in keys:
        parts, value = [g.param_values[key] for g in group], twin.param_values[key]
        if any(p.shape[1:] != value.shape[1:] for p in parts) or sum(p.shape[0] for p in parts) != value.shape[0]:
            return False
    mapped = _mapped_rows(group, twin, expected, into_other) if keys else None
    return bool(keys) if mapped is None else mapped


def _mapped_rows(group: list[Op], twin: Op, expected: Expected | None, into_other: bool) -> bool | None:
    """Whether the weight map fills ``twin``'s weight with the rows of ``group``'s, each somewhere
    (rows a port holds swapped still stack); None where it does not say. An op of the same shape
    that the map fills from other tensors (an MLP's first linear, as wide as a fused q and k) is
    no fused twin of sibling projections."""
    if expected is None or "weight" not in twin.params or any("weight" not in g.params for g in group):
        return None
    if into_other:
        fused, members = expected(twin.params["weight"]), [g.param_values["weight"] for g in group]
    else:
        fused, members = twin.param_values["weight"], [expected(g.params["weight"]) for g in group]
    if fused is None or any(m is None or m.shape[1:] != fused.shape[1:] for m in members):
        return None
    return all(_rows_at(m, fused) is not None for m in members)


def _fused_op(group: list[Op], output: torch.Tensor) -> Op:
    """One op standing for ``group``: its parameters concatenated as a fused module stores them."""
    params, values = {}, {}
    for key in dict.fromkeys(k for g in group for k in g.params):
        tensors = [g.param_values.get(key, _no_bias(g, key)) for g in group]
        if all(t is not None and t.shape[1:] == tensors[0].shape[1:] for t in tensors):
            params[key] = "+".join(g.params[key] for g in group if key in g.params)
            values[key] = torch.cat(tensors, 0)
    first, rows = group[0], [0]
    for g in group:
        rows.append(rows[-1] + (g.param_values["weight"].shape[0] if "weight" in g.param_values else 0))
    members = tuple((g.scope, g.params, lo, hi) for g, lo, hi in zip(group, rows, rows[1:]))
    return Op(index=first.index, name=first.name, spelling=" + ".join(g.spelling for g in group), args=first.args,
              params=params, param_values=values, input_ids=first.input_ids,
              out_ids=[i for g in group for i in g.out_ids], outputs=[output], scope=first.scope, members=members)


def _no_bias(op: Op, key: str) -> torch.Tensor | None:
    """A member's rows of a fused bias where it has none: zeros (Swin V2's key projection, whose
    fused side concatenates a zero buffer in its place)."""
    weight = op.param_values.get("weight")
    return weight.new_zeros(weight.shape[0]) if key == "bias" and weight is not None else None


def _replaced_findings(module: str, cs: list[Op], rs: list[Op], j1: int, cand: _Side, ref: _Side,
                       tol: Tolerance, operands: Callable[[str, Op, Op], list[dict]],
                       after_replaced: bool = False, made: dict[int, Op] | None = None) -> list[dict]:
    """One finding per op the candidate applies in the place of another (``cs`` against ``rs[j1:]``),
    except where the two give one result (another spelling of one operation) and where the op only
    receives what a replaced op before it made differ: the first difference is the one to explain,
    and an untouched module downstream of it is no lead. Where a parameter operand holds other values
    than the reference's (``operands``: through the weight map), that is the finding: a linear in the
    place of a conv on a whole map is a spelling the right port has too. ``after_replaced``: a
    replaced op before these already made a difference; ``made``: filled with each finding's id ->
    the candidate's op it is on."""
    found: list[dict] = []
    for k, c in enumerate(cs):
        r = rs[j1 + k]
        if _outputs_agree(c.outputs, r.outputs, tol) or \
                ((found or after_replaced) and _inputs_differ(c, r, cand, ref, tol)):
            continue
        where = _scoped(module, c)
        if c.params and r.params and (held := _folded_norm_findings(where, c, r, cand.rec) or operands(where, c, r)):
            found += held
        else:
            found.append(_finding(where, "op", c.name, None, c.name, r.name,
                                  f"{where}: the candidate applies {c.name} where the reference applies "
                                  f"{r.name} ({_where(rs, j1 + k, replaced=True)})"))
        for f in found if made is not None else ():
            made.setdefault(id(f), c)
    return found


def _written_out(module: str, span: list[Op], rs: list[Op], j: int, cand: _Side, ref: _Side, tol: Tolerance,
                 after_replaced: bool, operands: Callable[[str, Op, Op], list[dict]]) -> tuple[int | None, list[dict]]:
    """The candidate's run of ops ``span`` in the place of the reference's one op ``rs[j]`` (a layer
    norm, a GELU, an attention written out): the reference's op is run again on the one activation
    the run receives (else its recorded result stands: its inputs agree) and compared with the
    run's results. Returns the length of the run's first part that computes it (the ops after it
    are extra), or None and what says how the run differs from it: naming the run's first op as
    the error would blame the substitution, which the right port has too. Where no known variant
    explains it and a parameter the run reads holds other values or another layout than the
    reference op's (``operands``: through the weight map), that tensor is the finding, as for a
    pair. After a replaced op (``after_replaced``) a run that cannot be re-run receives its error: no lead."""
    r = rs[j]
    expected, rerun = _reference_result(r, _span_input(cand.rec, span), ref)
    for k in reversed(range(len(span))):
        if _outputs_agree(span[k].outputs[:1], expected, tol):
            return k + 1, []
    if after_replaced and not rerun:
        return None, []
    where, seq = _scoped(module, span[0]), ", ".join(op.name for op in span)
    basis = f"{_difference(span[-1].outputs[:1], expected)} from the reference's {r.name}{_call_args(r)}" \
        + (" on the same input" if rerun else "")
    place = _where(rs, j, replaced=True)
    if folded := _folded_norm_findings(where, span[0], r, cand.rec):
        return None, folded
    variants = [v for recognize in _VARIANTS.get(r.name, ()) for v in recognize(span, r, cand.rec)]
    held = [f for c, twin in _run_param_pairs(span, r) for f in operands(_scoped(module, c), c, twin)] \
        if not variants else []
    if held:  # a kernel or scale of the run holds other values, or is passed in another layout
        return None, held
    if not variants:
        return None, [_finding(where, "op", r.name, None, seq, r.name,
                               f"{where}: the candidate's hand-written sequence ({seq}) in place of {r.name}"
                               f"{_call_args(r)} computes something else: {basis} ({place})")]
    return None, [_finding(where, "op", r.name, argument, c_value, r_value, f"{where}: the candidate's hand-written "
                           f"{r.name} {words} ({place}; written as {seq}; {basis})")
                  for argument, c_value, r_value, words in variants]


def _run_param_pairs(span: list[Op], r: Op) -> list[tuple[Op, Op]]:
    """Each parameter a run reads with the reference op's parameter of that role, as one-parameter
    ops under one key: by its name's last part (``norm.weight`` for ``weight``), else the one of its
    size. A hand-written norm multiplies by its scale with ``mul``, whose operand is no ``weight``."""
    pairs = []
    for op in span:
        for key, name in op.params.items():
            size = [k for k in r.params if r.param_values[k].numel() == op.param_values[key].numel()]
            role = name.rsplit(".", 1)[-1] if name.rsplit(".", 1)[-1] in r.params else \
                (size[0] if len(size) == 1 else None)
            if role is None:
                continue
            one = (lambda o, k: {"params": {role: o.params[k]}, "param_values": {role: o.param_values[k]},
                                 "operands": {role: o.operands.get(k, o.param_values[k])}})
            pairs.append((replace(op, **one(op, key)), replace(r, **one(r, role))))
    return pairs


def _span_input(rec: OpRecorder, span: list[Op]) -> torch.Tensor | None:
    """The one activation a run of ops reads from before it (through the layout ops inside it), or
    None when it reads several: what a hand-written layer norm or GELU receives."""
    start, inside = span[0].index, {op.index for op in span}
    found: dict[tuple[int, int], torch.Tensor | None] = {}
    todo = [(i, op.index) for op in span for i in op.input_ids]
    while todo:
        tensor_id, before = todo.pop()
        source = rec.producer(tensor_id, before)
        if source is None or source.index < start:
            found[tensor_id, -1 if source is None else source.index] = rec.passed(tensor_id, before)
        elif source.index not in inside:
            todo += [(i, source.index) for i in source.input_ids]
    return next(iter(found.values())) if len(found) == 1 else None


def _reference_result(r: Op, x: torch.Tensor | None, ref: _Side) -> tuple[list[torch.Tensor], bool]:
    """What the reference's op gives on ``x`` (re-run: True), or, where it cannot be re-run on it
    (several inputs, another shape), its recorded result (False)."""
    own = ref.rec.passed(r.input_ids[0], r.index) if len(set(r.input_ids)) == 1 else None
    out = _rerun(r, x) if x is not None and own is not None and x.shape == own.shape else None
    return ([out], True) if out is not None else (r.outputs[:1], False)


def _call_args(op: Op) -> str:
    """``(eps=1e-06)``: the arguments an op is called with, as written: those that are None or False
    left out, a dim counted from the end (an attention's is none of its arguments)."""
    ndim = op.outputs[0].ndim if op.outputs else 0
    shown = {k: v - ndim if k == "dim" and _number(v) else v for k, v in op.args.items()
             if v is not None and v is not False and not k.startswith("_")
             and not (k == "dim" and op.name == "scaled_dot_product_attention")}
    return "(" + ", ".join(f"{k}={_show(v)}" for k, v in shown.items()) + ")" if shown else ""


# Known ways a hand-written op computes something else, by the reference op it stands for: each gives
# (argument, the candidate's, the reference's, in words) read from the run's ops and arguments.
def _variance_variant(span: list[Op], r: Op, rec: OpRecorder) -> list[tuple]:
    """An unbiased variance (``x.var(-1)``: ``torch.var`` defaults to ``correction=1``) where a
    norm divides by N."""
    for op in span:
        if op.name in ("var", "std", "var_mean", "std_mean") and (c := _correction(op)) != 0:
            return [("correction", c, 0, f"uses an unbiased variance ({op.name} correction={_show(c)}) where "
                                         f"{r.name} divides by N (correction=0)")]
    return []


def _correction(op: Op) -> Any:
    """A variance's correction as ``torch.var`` reads its spellings: ``correction``, ``unbiased``
    or a positional bool, 1 by default."""
    if op.args.get("correction") is not None:
        return op.args["correction"]
    flags = [v for k, v in op.args.items() if k == "unbiased" or k.startswith("arg") and isinstance(v, bool)]
    return int(bool(flags[0])) if flags else 1


def _eps_variant(span: list[Op], r: Op, rec: OpRecorder) -> list[tuple]:
    """A constant added to the square root of the variance (``sqrt(var) + eps``), or another one
    added under it than the reference's ``eps``."""
    eps, found = r.args.get("eps"), []
    for op in span:
        v = op.args.get("other")
        if op.name != "add" or not _number(v) or len(op.input_ids) != 1:
            continue
        source = rec.producer(op.input_ids[0], op.index)
        if source is not None and source.name in ("sqrt", "std"):
            found.append(("eps", "outside the square root", "inside", f"adds eps outside the square root "
                          f"({source.name}(var) + {v:g}) where {r.name} divides by sqrt(var + eps)"))
        elif _number(eps) and not _same_value(float(v), float(eps)) and any(
                o.name in ("sqrt", "rsqrt") and set(op.out_ids) & set(o.input_ids) for o in span):
            found.append(("eps", v, eps, f"adds eps={v:g} under the square root where the reference's "
                                         f"{r.name} has eps={eps:g}"))
    return found


def _gelu_variant(span: list[Op], r: Op, rec: OpRecorder) -> list[tuple]:
    """The other GELU formula: tanh against erf, or the sigmoid approximation ``x * sigmoid(1.702 x)``."""
    names, approximate = {op.name for op in span}, r.args.get("approximate", "none")
    meant = "the exact erf GELU" if approximate == "none" else "the tanh approximation"
    if approximate == "none" and "tanh" in names:
        used = "tanh", "the tanh approximation"
    elif approximate == "tanh" and "erf" in names:
        used = "none", "the exact erf form"
    elif "sigmoid" in names and not names & {"tanh", "erf"}:
        used = "sigmoid", "the sigmoid approximation"
    else:
        return []
    return [("approximate", used[0], approximate, f"uses {used[1]} where the reference applies {meant}")]


def _softmax_dim_variant(span: list[Op], r: Op, rec: OpRecorder) -> list[tuple]:
    """A softmax normalized over another dim than the reference's: the sum of one written out
    (``e / e.sum(-2)``), or a softmax call an attention written out did not fold."""
    if r.name == "scaled_dot_product_attention":
        want, what = -1, "the keys (dim -1)"
    elif isinstance(r.args.get("dim"), int) and r.outputs:
        want = r.args["dim"] - r.outputs[0].ndim
        what = f"dim {want}"
    else:
        return []
    for op in span:
        dim = op.args.get("dim")
        x = rec.passed(op.input_ids[0], op.index) if op.input_ids else None
        if op.name in ("sum", "softmax", "log_softmax") and _number(dim) and x is not None and dim - x.ndim != want:
            return [("dim", dim - x.ndim, want, f"normalizes over dim {dim - x.ndim} where the reference "
                                                f"normalizes over {what}")]
    return []


_NORM_VARIANTS = (_variance_variant, _eps_variant)
_VARIANTS: dict[str, tuple[Callable[[list[Op], Op, OpRecorder], list[tuple]], ...]] = {
    "layer_norm": _NORM_VARIANTS, "group_norm": _NORM_VARIANTS, "instance_norm": _NORM_VARIANTS,
    "batch_norm": _NORM_VARIANTS, "rms_norm": (_eps_variant,), "gelu": (_gelu_variant,),
    "softmax": (_softmax_dim_variant,), "log_softmax": (_softmax_dim_variant,),
    "scaled_dot_product_attention": (_softmax_dim_variant,),
}


def compare_streams(module: str, cand: _Side, ref: _Side, tol: Tolerance, ref_module: nn.Module,
                    root: nn.Module | None = None, expected: Expected | None = None, ref_name: str = "") -> list[dict]:
    """The findings that explain the first diverging op of two recorded op streams (``root``:
    the whole reference model, searched for the tensor a differing operand holds; ``ref_name``:
    the reference twin's name, to say where an op of a functional port sits)."""
    cs, rs = _fuse_siblings(cand, ref, tol, expected), _fuse_siblings(ref, cand, tol, expected, into_other=True)
    cs, rs = _fuse_batched(cs, rs, tol), _fuse_batched(rs, cs, tol)
    operands = (lambda where, c, r: _param_findings(where, c, r, ref_module, root, expected))
    pending: list[dict] = []
    unpaired: dict[int, tuple[bool, Op]] = {}  # id of an unpaired op's finding -> (the candidate's?, the op)
    replaced: dict[int, Op] = {}  # id of a replaced op's finding -> the candidate's op
    idle: list[dict] = []  # extra ops that change nothing here: where an op found missing may have gone
    into: dict[int, str] = {}  # id of an extra op's finding -> the op reading its result (where it went)
    cand_scopes = _scopes(cand.rec)
    last_c, last_r, agreed = -1, -1, None  # recorder indices of the last agreeing pair, the pair
    held: tuple[int, list[dict]] | None = None  # a pair agreeing only with two axes of one size exchanged
    cs, rs = _at_their_readers(cs, cand.rec), _at_their_readers(rs, ref.rec)
    given, rounded = tol, []  # the tolerance asked for; pairs agreeing only within float32's rounding of it
    codes = _aligned(cs, rs, expected, cand.rec, tol, _stored_folds(cs, rs, cand, ref, tol))

    def diverged(at: int, c: Op, r: Op) -> list[dict]:
        where = _scoped(module, c)
        if exchanged := _exchanged_factors(where, c, r, cand, ref, tol, ref_name or module):
            return exchanged  # every factor agrees: nothing before the products explains them
        if joined := _groups_joined(module, c):
            return joined  # the groups' kernels agree (paired by them), their join does not
        found = _feeding(pending, unpaired, c, r, cand, ref, tol)
        found += _located(_head_findings(where, c, r, cand, ref) or _argument_findings(where, c, r), c, r, cs,
                          ref_name)
        found += _part_findings(where, c, r, cs, expected) or _param_findings(where, c, r, ref_module, root,
                                                                               expected)
        found += _mask_findings(where, c, r, tol, (cand.rec, ref.rec))
        # a precision the two sides compute in (a softmax upcast to float32, the cast back) is a
        # rounding, not a value: a value difference behind it is said first
        precision = [f for f in found if _precision_only(f)]
        found = [f for f in found if not _precision_only(f)]
        inputs_differ = not found and _inputs_differ(c, r, cand, ref, tol)
        relaid = not found and not inputs_differ and _relaid_input(c, r, cand, ref)
        if inputs_differ or relaid:
            found = _swapped_inputs(where, c, r, cand, ref, tol) \
                or _other_part(where, c, r, cand, ref, tol) \
                or _other_source(where, c, r, cand, ref, tol, ref_name or module) \
                or _step_skipped(where, c, r, cand, ref, tol, ref_name or module, module) \
                or _rearranged_input(where, c, r, cand, ref, tol, module) \
                or _regrouped_input(module, c, r, cand, ref, tol, agreed) \
                or _part_operands(where, c, r, cand, ref, tol) \
                or _layout_findings(module, cand, ref, last_c, c.index, last_r, r.index, c.name, agreed)
        if not found and relaid:
            found = [_finding(where, "op", c.name, None, None, None,
                              f"{where}: {c.name} receives the reference's input in another layout, "
                              f"{relaid} ({_difference(c.outputs, r.outputs)})")]
        if not found and not inputs_differ:
            found = _broadcast_findings(where, c, r) or _crossed_operands(where, c, r, cs, rs, tol)
        if not found and precision:
            found, precision = precision, []
        if not found:
            why = ("receives other inputs, though every operation before it agrees: they are sliced, "
                   "indexed or ordered differently" if inputs_differ
                   else "gives another result from the same arguments and inputs")
            found = [_finding(where, "value", c.name, None, None, None,
                              f"{where}: {c.name} {why} ({_difference(c.outputs, r.outputs)}; candidate "
                              f"{c.spelling}, reference {r.spelling})")]
        found += precision
        found += _unpaired_later(module, found, codes[at + 1:], cs, rs, ref_name, cand_scopes, unpaired)
        return _branch_joined(_moved(_crossed_join(found, unpaired, c, r, cand, ref, tol), idle, into), unpaired,
                              cand, ref, tol, module, ref_name or module)

    skip = (-1, -1)  # stream positions up to which a rewrite of other shapes rejoined the reference
    for at, (tag, i1, i2, j1, j2) in enumerate(codes):
        if tag != "equal" and (skip[0] >= i1 or skip[1] >= j1):
            i1, j1 = min(max(i1, skip[0] + 1), i2), min(max(j1, skip[1] + 1), j2)
            tag = "replace" if i1 < i2 and j1 < j2 else "delete" if i1 < i2 else "insert" if j1 < j2 else "equal"
        if tag != "equal":
            after_replaced = any(f["kind"] == "op" for f in pending)
            if tag == "replace" and i2 - i1 > 1 and j2 - j1 == 1:  # one op written out: does it compute it?
                done, found = _written_out(module, cs[i1:i2], rs, j1, cand, ref, tol, after_replaced, operands)
                if done is None:
                    pending += found
                    continue
                tag, i1, j1 = "insert", i1 + done, j2  # it does: what follows it is extra
            if tag == "replace" and j2 - j1 == 1 and (run := _extra_run(pending, unpaired, cs[i2 - 1], cand.rec)):
                # extra ops feeding the op in the place of one reference op: the run it ends, written
                # out (a weight standardized by its mean and variance where the reference calls a norm)
                done, found = _written_out(module, [op for _, op in run] + cs[i1:i2], rs, j1, cand, ref, tol,
                                           after_replaced, operands)
                if done == len(run) + i2 - i1 or found and not _unexplained(found):
                    pending[:] = [f for f in pending if all(f is not g for g, _ in run)] + found
                    continue
            n = min(i2 - i1, j2 - j1) if tag == "replace" else 0
            pending += _replaced_findings(module, cs[i1:i1 + n], rs, j1, cand, ref, tol, operands, after_replaced,
                                          replaced)
            if any(f["kind"] == "op" for f in pending):
                continue  # what follows a replaced op that changed the values receives its error: no lead
            for k in range(i1 + n, i2):
                extra = _unpaired_finding(module, "extra_op", cs[k], rs, j2)
                reader = next((o for o in cs[k + 1:] if set(o.input_ids) & set(cs[k].out_ids)), None)
                if reader is not None:
                    into[id(extra)] = reader.name
                if _returns_input(cand.rec, cs[k]) or agreed is not None and _part_of(cs[k], agreed[1], tol):
                    # it changes nothing (a table resized to the size it has), or computes another part of
                    # what the last agreeing reference op computes (a class token's position added on its own)
                    idle.append(extra)
                    continue
                pending.append(extra)
                unpaired[id(pending[-1])] = True, cs[k]
            for k in range(j1 + n, j2):
                pending.append(_unpaired_finding(module, "missing_op", rs[k], cs, i2, ref_name, cand_scopes))
                unpaired[id(pending[-1])] = False, rs[k]
            continue
        for k, (c, r) in enumerate(zip(cs[i1:i2], rs[j1:j2])):
            if i1 + k <= skip[0] or j1 + k <= skip[1]:
                continue  # inside a rewrite that rejoined the reference
            wide = _float32_rounding(tol)
            if _narrowed(c, r, pending) and _pair_agrees(c, r, wide):
                rounded += [] if _pair_agrees(c, r, given) else _precision_finding(_scoped(module, c), c, r)
                tol, agrees = wide, True  # rounding that every op after it carries
            else:
                agrees = _pair_agrees(c, r, tol) or _part_of(c, r, tol) is not None and _parts_apart(c, cs)
            twin = r if agrees else _value_twin(c, rs, j1 + k, tol)
            if twin is None and held is None and _axes_exchanged(c.outputs, r.outputs, tol):
                # heads and tokens of one count exchanged (q split per token, the reference's per
                # head): the op computes the reference's values, laid out otherwise. A later op it
                # feeds agreeing as it is shows the layout harmless; one diverging first is
                # explained here, where the exchanged axes may be the error (a map's H and W)
                held, twin = (c.index, diverged(at, c, r)), r
            if twin is not None:
                if held is not None and held[0] in _upstream(cand.rec, c) and _pair_agrees(c, twin, tol):
                    held = None
                # what was unpaired so far changed nothing; an op replaced on another branch (a sum
                # of one operand taken as its mean, then the other operand's activation) still may,
                # as may an extra op there (a ReLU on the shortcut, read by the residual add)
                upstream = _upstream(cand.rec, c) | {c.index}
                crosswise = twin is not r and _missing_for(twin, r, pending, unpaired)
                aside = [f for f in pending if id(f) in replaced and replaced[id(f)].index not in upstream
                         or _extra_aside(unpaired.get(id(f)), upstream, cand.rec)]
                replaced = {id(f): replaced[id(f)] for f in aside if id(f) in replaced}
                unpaired = {id(f): unpaired[id(f)] for f in aside if id(f) in unpaired}  # kept alive: ids stay
                pending[:] = aside
                if crosswise:
                    # the op is the twin of one found missing before it (q normalized where the
                    # reference normalizes q, then k): the op missing is the one in its place
                    pending.append(_unpaired_finding(module, "missing_op", r, cs, i1 + k + 1, ref_name, cand_scopes))
                    unpaired[id(pending[-1])] = False, r
                last_c, last_r, agreed = c.index, twin.index, (c, twin)
                continue
            # a held pair explains only what its result flows into (not a bug on another branch)
            if held is not None and held[0] in _upstream(cand.rec, c):
                return held[1]
            if (rejoin := _rejoined(cs, rs, i1 + k, j1 + k, cand, ref, tol)) is not None:
                # ops of other shapes (one path's product where the reference weighs both paths stacked)
                # whose results rejoin the reference's: a rewrite, no difference; the walk goes on after it
                skip, (c, twin) = rejoin, (cs[rejoin[0]], rs[rejoin[1]])
                upstream = _upstream(cand.rec, c) | {c.index}
                aside = [f for f in pending if id(f) in replaced and replaced[id(f)].index not in upstream
                         or _extra_aside(unpaired.get(id(f)), upstream, cand.rec)]
                replaced = {id(f): replaced[id(f)] for f in aside if id(f) in replaced}
                unpaired = {id(f): unpaired[id(f)] for f in aside if id(f) in unpaired}
                pending[:] = aside
                last_c, last_r, agreed = c.index, twin.index, (c, twin)
                continue
            return diverged(at, c, r)
    mine, theirs = _returned(cand, ref)
    if held is not None and not _outputs_agree(mine, theirs, tol):
        return held[1]
    if pending and not _outputs_agree(mine, theirs, tol) \
            and not all(_run_elsewhere(unpaired.get(id(f)), cs, rs, tol) for f in pending):
        return _branch_joined(_moved(pending, idle, into), unpaired, cand, ref, tol, module, ref_name or module)
    if rounded and _outputs_agree(mine, theirs, tol) and not _outputs_agree(mine, theirs, given):
        return rounded  # the precision an op is computed in is the one difference
    if not _outputs_agree(mine, theirs, tol) and not _outputs_agree(mine, theirs, tol, same_shape=True):
        # every op agrees, yet the output does not, in any layout (one of one shape too: an NHWC norm
        # returning its own layout against an NCHW one where C == H == W): the layout after the last op differs
        found = _layout_findings(module, cand, ref, last_c, len(cand.rec.ops), last_r, len(ref.rec.ops), "the output",
                                 agreed)
        if found and found[0]["kind"] in ("extra_op", "missing_op") and found[0]["op"] in _RELAYOUT \
                and any(a.shape != b.shape for a, b in zip(cand.output.values(), ref.output.values())):
            # twins returning other layouts: a reshape or permute one writes only spells its layout; the
            # values it leaves reordered are the fault (of one layout, one side's reshape missing is)
            found = _rearranged_output(module, cand, ref, tol) or found
        found = _respelled_layout(module, found, cand, ref, tol, last_c, last_r)
        if found and found[0]["argument"] == _JOINED:  # branches joined in another order
            # returned as joined, the output's reordering says which channels moved where; moved again after
            # the join (a channel shuffle), it says less than the join does
            outcome = _rearranged_output(module, cand, ref, tol)
            found = outcome + found if cand.rec.ops[-1].name in _JOINS else found + outcome
        return found or _rearranged_output(module, cand, ref, tol) or [_finding(
            module, "value", None, None, None, None,
            f"{module}: every operation agrees with the reference, the returned value does not")]
    return []


def _returned(cand: _Side, ref: _Side) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The twins' returned leaves to compare: all of them, or, where one returns more than the other
    (an attention returning its weights too), those that pair as their row pairs them."""
    if len(cand.output) == len(ref.output):
        return list(cand.output.values()), list(ref.output.values())
    from harness.localize import _leaf_pairs  # localize measures rows; the diagnosis only pairs leaves alike

    pairs = _leaf_pairs(cand.output, ref.output)
    return [a for _, a, _ in pairs], [b for _, _, b in pairs]


def _precision_finding(where: str, c: Op, r: Op) -> list[dict]:
    """The pair's difference where it agrees only within float32's rounding: the precision each side
    computes it in (a softmax given ``dtype=torch.float32`` in one, cast back after), if they differ."""
    mine, theirs = _computed_in(c), _computed_in(r)
    if mine == theirs:
        return []
    op, inside = ("softmax", " (the attention's softmax)") if c.name == "scaled_dot_product_attention" else (c.name, "")
    text = (f"{where}: {op} computed in {mine} in the candidate, {theirs} in the reference{inside}; every other "
            f"operation agrees: the results differ by that rounding")
    return [{**_finding(where, "argument", op, "dtype", mine, theirs, text), "rounding": True}]


def _computed_in(op: Op) -> str:
    """The dtype ``op`` computes in: the one it is given (``dtype=``), else its result's."""
    dtype = op.args.get("dtype") or (op.outputs[0].dtype if op.outputs else None)
    return str(dtype).removeprefix("torch.")


def _respelled_layout(module: str, found: list[dict], cand: _Side, ref: _Side, tol: Tolerance, c_lo: int,
                      r_lo: int) -> list[dict]:
    """``found`` at the output, where it names a layout op one side writes and the other spells
    with ops of other names (a channel shuffle as a gather against view, transpose, view): that op
    is the port's spelling, also in the correct port; what it does to the values, the reference's
    returned reordered, is the finding. A layout op one side alone writes (a shuffle left out) stays."""
    if not found or found[0]["kind"] not in ("extra_op", "missing_op") or found[0]["op"] not in LAYOUT:
        return found
    mine = Counter(op.name for op in _layout_between(cand, c_lo, len(cand.rec.ops)))
    theirs = Counter(op.name for op in _layout_between(ref, r_lo, len(ref.rec.ops)))
    if not (mine - theirs and theirs - mine):
        return found
    return _rearranged_output(module, cand, ref, tol) or found


def _rejoined(cs: list[Op], rs: list[Op], p: int, q: int, cand: _Side, ref: _Side,
              tol: Tolerance) -> tuple[int, int] | None:
    """Where the diverging pair ``cs[p]``/``rs[q]``, of other shapes, rejoins the reference: the
    stream positions of the first later pair of ops whose results agree, each computed from its
    side's op of the pair. Ops of other shapes compute other parts of one computation (a GELU on
    each half of the features where the reference's runs on both, one path weighed at a time where
    the reference weighs the paths stacked); where their results meet again, they were a rewrite
    and explain nothing. None where the pair has one shape (its difference is a value's) or
    nothing after it agrees."""
    c, r = cs[p], rs[q]
    if c.shape == r.shape or c.shape is None or r.shape is None:
        return None
    fed = functools.cache(lambda b: _fed_by(ref.rec, r, rs[b]))  # a walk of the graph each: only where shapes fit
    for a in range(p + 1, min(len(cs), p + 1 + _REJOIN_WINDOW)):
        if not _fed_by(cand.rec, c, cs[a]):
            continue
        for b in range(q + 1, min(len(rs), q + 1 + _REJOIN_WINDOW)):
            if rs[b].shape == cs[a].shape and fed(b) and _outputs_agree(cs[a].outputs, rs[b].outputs, tol):
                # agreeing within the tolerance is no rewrite where an op on the way is set otherwise
                # (a tanh GELU within float32's tolerance of the exact one): that setting is the finding
                return (a, b) if _settings_alike(cs[p:a + 1], rs[q:b + 1]) else None
    return None


def _settings_alike(cs: list[Op], rs: list[Op]) -> bool:
    """Whether the ops of one name on both sides take the same settings (an ``approximate``, an
    ``eps``: strings, flags and floats; not sizes or dims, which a rewrite changes)."""
    def settings(ops: list[Op]) -> dict[str, set]:
        out: dict[str, set] = {}
        for op in ops:
            out.setdefault(op.name, set()).add(tuple(sorted(
                (k, v) for k, v in op.args.items() if isinstance(v, (str, bool, float)))))
        return out

    ours, theirs = settings(cs), settings(rs)
    return all(ours[name] == theirs[name] for name in ours.keys() & theirs.keys())


_REJOIN_WINDOW = 32  # stream positions after a pair of other shapes searched for where it rejoins


def _fed_by(rec: OpRecorder, op: Op, later: Op) -> bool:
    """Whether ``op``'s result flows into ``later`` (a computing op after it)."""
    return bool(later.outputs) and op.index in _upstream(rec, later)


def _precision_only(finding: dict) -> bool:
    """Whether ``finding`` says only in what precision a value is computed: a ``dtype`` argument
    (``softmax(..., dtype=float32)``) or a cast one side applies, each between dtypes at least as
    wide as float32: a float16 softmax loses what a port should keep."""
    if finding["argument"] == "dtype":
        return _wide(finding["candidate"]) and _wide(finding["reference"])
    return bool(finding.get("rounding"))


def _extra_run(pending: list[dict], unpaired: dict[int, tuple[bool, Op]], last: Op,
               rec: OpRecorder) -> list[tuple[dict, Op]]:
    """The pending extra ops of the candidate whose results flow into ``last``, in their order, with
    their findings."""
    upstream = _upstream(rec, last)
    run = [(f, unpaired[id(f)][1]) for f in pending
           if id(f) in unpaired and unpaired[id(f)][0] and unpaired[id(f)][1].index in upstream]
    return sorted(run, key=lambda entry: entry[1].index)


def _unexplained(found: list[dict]) -> bool:
    """Whether a written-out run's findings only say that it computes something else."""
    return all(f["kind"] == "op" and f["argument"] is None for f in found)


def _missing_for(twin: Op, r: Op, pending: list[dict], unpaired: dict[int, tuple[bool, Op]]) -> bool:
    """Whether ``twin``, the reference op a candidate op agrees with in the place of ``r`` (of its
    name), was found missing before it, and ``r`` was computed after it: the candidate's op is
    ``twin``'s, and the op it lacks is ``r``."""
    return r.index > twin.index and any(id(f) in unpaired and not unpaired[id(f)][0] and unpaired[id(f)][1] is twin
                                        for f in pending)


def _run_elsewhere(entry: tuple[bool, Op] | None, cs: list[Op], rs: list[Op], tol: Tolerance) -> bool:
    """Whether an unpaired op (``entry``: the candidate's?, the op) computes what an op of the other
    side computes, elsewhere in its stream: branches run in another order (right before left), each
    op's result the same. Such ops explain no difference at the output; what joins them may."""
    if entry is None:
        return False
    mine, op = entry
    return any(o.name == op.name and o.shape == op.shape and (_pair_agrees(op, o, tol) if mine else
                                                              _pair_agrees(o, op, tol)) for o in (rs if mine else cs))


def _extra_aside(entry: tuple[bool, Op] | None, upstream: set[int], rec: OpRecorder) -> bool:
    """Whether an unpaired op (``entry``: the candidate's?, the op) is an extra op of the candidate
    on another branch than an agreeing pair (none of whose inputs it computed), whose result a later
    op reads: it may still explain a pair it flows into."""
    if entry is None or not entry[0] or entry[1].index in upstream:
        return False
    made = set(entry[1].out_ids)
    return any(made & set(op.input_ids) for op in rec.ops[entry[1].index + 1:])


def _returns_input(rec: OpRecorder, op: Op) -> bool:
    """Whether ``op``'s one result holds its first input's values in its shape (the input an
    activation, or a parameter as passed): run on these values it is no op."""
    if len(op.outputs) != 1 or len(op.input_ids) + len(op.params) != 1:
        return False  # an op of several operands combines them
    key = next(iter(op.params), None)
    x = rec.passed(op.input_ids[0], op.index) if op.input_ids else op.operands.get(key, op.param_values.get(key))
    return x is not None and x.is_floating_point() and _close(op.outputs[0], x)


def _unpaired_later(module: str, found: list[dict], later: list[tuple], cs: list[Op], rs: list[Op], ref_name: str,
                    cand_scopes: Any, unpaired: dict[int, tuple[bool, Op]] | None = None) -> list[dict]:
    """For an op found missing (extra) where the streams first differ, the same op found extra
    (missing) further on, in the opcodes ``later``: the op was moved (a ReLU applied before the
    residual add where the reference applies it after), which :func:`_moved` then says as one.
    ``unpaired``, where given, gets each finding's op (id of the finding -> the candidate's?, the op)."""
    out = []
    for f in found:
        kind = {"missing_op": "extra_op", "extra_op": "missing_op"}.get(f["kind"])
        for tag, i1, i2, j1, j2 in later if kind else ():
            if tag == "replace" and 1 in (i2 - i1, j2 - j1) and (i2 - i1, j2 - j1) != (1, 1):
                continue  # a run written out in the place of one op (a hand-written norm's sub): no op of its own
            ops = range(i1, i2) if kind == "extra_op" and tag in ("delete", "replace") else \
                range(j1, j2) if kind == "missing_op" and tag in ("insert", "replace") else ()
            k = next((k for k in ops if (cs if kind == "extra_op" else rs)[k].name == f["op"]), None)
            if k is not None:
                out.append(_unpaired_finding(module, "extra_op", cs[k], rs, j2) if kind == "extra_op" else
                           _unpaired_finding(module, "missing_op", rs[k], cs, i2, ref_name, cand_scopes))
                if unpaired is not None:
                    unpaired[id(out[-1])] = (kind == "extra_op", cs[k] if kind == "extra_op" else rs[k])
                break
    return out


def _crossed_join(found: list[dict], unpaired: dict[int, tuple[bool, Op]], c: Op, r: Op, cand: _Side,
                  ref: _Side, tol: Tolerance) -> list[dict]:
    """A join found extra before the diverging pair ``c``/``r`` and missing after it, which on both
    sides joins one value (the module's input: a residual) with what the pair's op takes or gives:
    the candidate joins, then applies ``c`` to the sum, where the reference applies ``r`` to the
    join's operand, then joins. The join keeps its place (it reads what the reference's does); the
    pair's op is in another place (a layer scale applied after the residual add), said first, as one."""
    mine = lambda f, side: id(f) in unpaired and unpaired[id(f)][0] is side
    for extra in (f for f in found if f["kind"] == "extra_op" and mine(f, True)):
        lost = next((f for f in found if f["kind"] == "missing_op" and f["op"] == extra["op"] and mine(f, False)), None)
        if lost is None:
            continue
        e, m = unpaired[id(extra)][1], unpaired[id(lost)][1]
        if not _joins_across(e, m, c, r, cand, ref, tol):
            continue
        label, own = _op_label(r), _op_label(c)
        label += f" (the candidate's {own})" if own != label else ""
        text = (f"{lost['module']}: {label} and {e.name} in the other order: the reference applies {_op_label(r)} to "
                f"an operand of its {m.name}, the candidate to the result of its {e.name}")
        rest = [f for f in found if f is not extra and f is not lost]
        return [_finding(lost["module"], "missing_op", r.name, None, f"{c.name} (after {e.name})",
                         f"{r.name} (before {m.name})", text), *rest]
    return found


def _joins_across(e: Op, m: Op, c: Op, r: Op, cand: _Side, ref: _Side, tol: Tolerance) -> bool:
    """Whether the candidate's join ``e`` feeds ``c`` and the reference's ``m`` reads ``r``'s result,
    each joining one value that agrees with the other's, ``e`` the other with what ``r`` receives."""
    if len(set(e.input_ids)) != 2 or len(set(m.input_ids)) != 2 or e.params or m.params \
            or all(getattr(_source(cand.rec, i, c.index), "index", None) != e.index for i in c.input_ids):
        return False
    made = [i for i in m.input_ids if getattr(_source(ref.rec, i, m.index), "index", None) == r.index]
    if len(made) != 1:
        return False
    other = ref.rec.passed(next(i for i in m.input_ids if i not in made), m.index)
    taken = [ref.rec.passed(i, r.index) for i in r.input_ids]
    values = [cand.rec.passed(i, e.index) for i in e.input_ids]
    agree = (lambda a, b: a is not None and b is not None and _outputs_agree([a], [b], tol))
    return any(agree(a, other) and any(agree(b, t) for t in taken) for a, b in (values, values[::-1]))


def _moved(findings: list[dict], idle: Sequence[dict] = (), into: dict[int, str] | None = None) -> list[dict]:
    """An op missing in one place and extra in another of one module is one op moved (an activation
    applied after the norm where the reference applies it before): said first, as one finding.
    ``idle``: extra ops that change nothing where the candidate runs them (a ReLU on a shortcut that
    holds no negative values); an op missing with no extra twin but such one was moved there.
    ``into``: id of an extra op's finding -> the op reading its result (a ReLU moved onto an operand of
    the add)."""
    into = into or {}
    on = lambda f: f" on an operand of {into[id(f)]}" if into.get(id(f)) in _JOINING else ""
    for extra in (f for f in findings if f["kind"] == "extra_op"):
        # the extra op may run in a submodule of the one missing it (a ReLU module the candidate
        # calls before its norm): the moved op is the outer module's
        lost = next((f for f in findings if f["kind"] == "missing_op" and f["op"] == extra["op"]
                     and _within(extra["module"], f["module"])), None)
        if lost is None:
            continue
        where = lambda f: f["text"].split(" in the candidate ", 1)[1].split(";", 1)[0]
        text = (f"{lost['module']}: {_moved_label(lost, extra)} in another place than the reference's: missing in "
                f"the candidate {where(lost)}, extra{on(extra)} {where(extra)}")
        rest = [f for f in findings if f is not lost and f is not extra]
        return [_finding(lost["module"], "missing_op", extra["op"], None, extra["op"], extra["op"], text), *rest]
    for extra in idle:
        lost = next((f for f in findings if f["kind"] == "missing_op" and f["op"] == extra["op"]
                     and _within(extra["module"], f["module"])), None)
        if lost is None:
            continue
        where = lambda f: f["text"].split(" in the candidate ", 1)[1].split(";", 1)[0]
        text = (f"{lost['module']}: {extra['op']} applied in another place than the reference's: the candidate "
                f"applies it{on(extra)} {where(extra)}, where it changes nothing on these inputs; the reference "
                f"applies it {where(lost)}")
        rest = [f for f in findings if f is not lost]
        return [{**lost, "candidate": extra["op"], "text": text}, *rest]
    return findings


def _branch_joined(findings: list[dict], unpaired: dict[int, tuple[bool, Op]], cand: _Side, ref: _Side,
                   tol: Tolerance, module: str, ref_name: str) -> list[dict]:
    """A join the candidate lacks (a residual ``add``) with the missing ops whose results only it
    reads, directly or through each other (the shortcut's conv and norm before it), said as one
    finding: the join, adding what that branch of the reference computes. One op left out is the
    join; the branch is its operand, which the candidate never computes, or computes apart and never
    joins (a shortcut run before the main branch, its result unread: :func:`_unread_twin`)."""
    rec = ref.rec
    lost = {id(f): unpaired[id(f)][1] for f in findings
            if f["kind"] == "missing_op" and id(f) in unpaired and not unpaired[id(f)][0]}
    for join in (f for f in findings if id(f) in lost and f["op"] in _JOINING):
        region = _upstream(rec, lost[id(join)]) | {lost[id(join)].index}
        branch = [f for f in findings if id(f) in lost and f is not join
                  and lost[id(f)].index in region and _read_within(rec, lost[id(f)], region)]
        if not branch:
            continue
        branch.sort(key=lambda f: lost[id(f)].index)
        # each op with who applies it (the reference's ``downsample.0``: the shortcut's module)
        parts = ", ".join(f"{f['op']}: {f['text'].rsplit('; ', 1)[-1]}" for f in branch)
        own = _unread_twin(lost[id(branch[-1])], cand, tol)
        text = f"{join['text']} to what a branch the candidate lacks too computes ({parts})" if own is None else \
            f"{join['text']} to what a branch computes ({parts}), which the candidate computes too " \
            f"({_computed_by(module, own)}) but never {_JOINING[join['op']]}"
        reads = sorted({name for f in (join, *branch) for name in f.get("reads", ())})
        folded = {**join, "text": text, "reads": reads}
        unpaired[id(folded)] = unpaired[id(join)]
        first = min(i for i, f in enumerate(findings) if any(f is g for g in (join, *branch)))
        rest = [f for f in findings if f is not join and all(f is not b for b in branch)]
        return rest[:first] + [folded] + rest[first:]
    return findings


def _unread_twin(r: Op, cand: _Side, tol: Tolerance) -> Op | None:
    """The candidate's op computing what the reference's ``r`` computes, its result read by no later
    op: a branch the candidate computes, then leaves out of the join."""
    return next((c for c in cand.stream if c.outputs and _read_within(cand.rec, c, set())
                 and _outputs_agree(c.outputs[:1], r.outputs[:1], tol)), None)


def _computed_by(base: str, op: Op) -> str:
    """Who computes the candidate's ``op``: its submodule, or the batch norm stored folded it ends."""
    if op.scope:
        return _scoped(base, op)
    owner = "its" if base == ROOT else f"{base}'s"
    return f"{owner} {_fold_words(op)}" if op.folded else f"{owner} {op.name}"


def _fold_words(add: Op) -> str:
    """The batch norm the candidate stores folded, said by the tensors it holds (``add`` ending it)."""
    return f"batch norm stored folded as {' and '.join(add.folded)}"


def _read_within(rec: OpRecorder, op: Op, region: set[int]) -> bool:
    """Whether every recorded op reading ``op``'s results lies in ``region`` (op indices)."""
    made = set(op.out_ids)
    return all(o.index in region for o in rec.ops[op.index + 1:] if made & set(o.input_ids))


def _moved_label(lost: dict, extra: dict) -> str:
    """The moved op as each side's finding labels it: with the parameters it reads (a talking-heads
    mix applied after the softmax, which the reference applies before it), the candidate's where
    they are named otherwise."""
    label_r = lost["text"].split(": ", 1)[1].split(" missing in the candidate", 1)[0]
    label_c = extra["text"].split(": extra ", 1)[-1].split(" in the candidate", 1)[0]
    return label_r if label_c in (label_r, extra["op"]) else f"{label_r} (the candidate's {label_c})"


# ops joining branches (an operand is one of them), with what each does to them
_JOINING = {"add": "adds", "sub": "subtracts", "mul": "multiplies", "cat": "joins", "stack": "stacks"}


def _within(inner: str, outer: str) -> bool:
    """Whether module ``inner`` is ``outer`` or one of its submodules (by name)."""
    return inner == outer or outer == ROOT or inner.startswith(outer + ".")


def _aligned(cs: list[Op], rs: list[Op], expected: Expected | None, rec: OpRecorder, tol: Tolerance | None = None,
             folds: Sequence[tuple[int, int, int]] = ()) -> list[tuple[str, int, int, int, int]]:
    """``difflib`` opcodes pairing two op streams, anchored on parameters (:func:`_anchors`): an op
    paired with the one reading the same tensor's values whatever their names (a 1x1 conv with the
    linear it ports), a hand-written run with the one op it writes out (a batch norm folded into a
    scale and a shift, computed or stored: ``folds``, :func:`_stored_folds`), from where it computes
    that op (:func:`_run_start`). Between anchors, ops pair by name; a name alone would pair a
    hand-written norm's ``mul`` by its scale with a layer scale's ``mul`` further on, and every op
    after it with the wrong twin."""
    codes: list[tuple[str, int, int, int, int]] = []
    i0 = j0 = 0
    for lo, hi, j in [*_anchors(cs, rs, expected, rec, folds), (len(cs), len(cs), len(rs))]:
        own = _run_start(cs, rs[j], i0, lo, hi, rec, tol) if hi - lo > 1 and lo < len(cs) else lo
        stretch = _by_name(cs, rs, i0, own, j0, j)
        if hi - lo == 1 or lo == len(cs):
            codes += stretch
            if lo < len(cs):
                codes.append(("equal" if cs[lo].name == rs[j].name or _pointwise_pair(cs[lo], rs[j]) else "replace",
                              lo, hi, j, j + 1))
        else:  # a hand-written run: it begins after the last ops that pair by name before it
            last = max((k for k, code in enumerate(stretch) if code[0] == "equal"), default=-1)
            codes += stretch[:last + 1]
            start, r_start = (stretch[last][2], stretch[last][4]) if last >= 0 else (i0, j0)
            if r_start < j:
                codes.append(("insert", start, start, r_start, j))
            codes.append(("replace", start, hi, j, j + 1))
        i0, j0 = hi, j + 1
    return codes


def _at_their_readers(stream: list[Op], rec: OpRecorder) -> list[Op]:
    """``stream`` with each op computing from parameters alone (a position-bias MLP on its
    coordinate table, a logit scale's clamp and exp) moved to just before the first op that reads
    what it computes from an activation: one port computes such a table first thing in its forward,
    another right where it adds it, and aligned where they stand, they would pair with the other
    side's ops on the activations. One that only changes in place a parameter a later op reads (a
    slice of a bias zeroed) leaves the stream: that op receives it as an operand. Ops nothing on the
    activations reads keep their place."""
    derived: set[int] = set()  # ids of tensors computed from parameters alone
    held: list[Op] = []
    out: list[Op] = []
    for op in stream:
        sources = [_computed_sources(rec, i, op.index) for i in op.input_ids]
        # from parameters alone: it reads one, or only what such ops computed (an op reading
        # nothing recorded, a pool on a map from a call not seen, is no such op)
        if (op.params or any(sources)) and all(found is not None and found <= derived for found in sources):
            derived.update(op.out_ids)
            held.append(op)
            continue
        needed = set().union(*(found for found in sources if found)) & derived
        taken = []
        names, operands = set(op.params.values()), []
        for h in reversed(held):  # the held ops computing what it reads, and what they read
            if needed & set(h.out_ids):
                taken.append(h)
                needed |= set().union(*(found for i in h.input_ids if (found := _computed_sources(rec, i, h.index))))
            elif h.spelling.endswith("_") and names & set(h.params.values()):
                operands.append(h)  # changed a parameter it reads in place (a slice of a bias zeroed): its operand
        taken.reverse()
        held = [h for h in held if all(h is not t for t in (*taken, *operands))]
        out += taken + [op]
    place = {id(op): k for k, op in enumerate(stream)}
    for h in held:  # what no op on the activations reads keeps its place
        out.insert(next((k for k, op in enumerate(out) if place[id(op)] > place[id(h)]), len(out)), h)
    return out


_SOURCE_STEPS = 64  # layout ops followed back from a tensor to the ops computing what it holds


def _computed_sources(rec: OpRecorder, tensor_id: int, before: int) -> set[int] | None:
    """The ids of the tensors computed by ops (not layout ops) that ``tensor_id`` holds values of,
    through the layout ops making it (a table gathered by an index, viewed); None where it holds
    the module's input or the walk is too long."""
    found: set[int] = set()
    todo, steps = [(tensor_id, before)], 0
    while todo:
        tid, at = todo.pop()
        steps += 1
        op = rec.producer(tid, at)
        if steps > _SOURCE_STEPS or op is None and tid in rec.given:
            return None
        if op is None:
            continue  # a tensor no op made and no input: a parameter, a buffer, a constant
        if op.kind == "compute" and not op.absorbed:
            found.add(tid)
        else:
            todo += [(i, op.index) for i in op.input_ids]
    return found


def _pointwise_pair(c: Op, r: Op) -> bool:
    """Whether ``c`` and ``r`` are one operation in two spellings: a linear over the channels (``x @ W``
    on NHWC) against a 1x1 conv of stride 1, no padding, one group, or the other way round."""
    if {c.name, r.name} != {"linear", "conv2d"}:
        return False
    conv = c if c.name == "conv2d" else r
    weight = conv.operands.get("weight")
    return weight is not None and tuple(weight.shape[2:]) == (1, 1) and conv.args.get("groups", 1) == 1 and all(
        v in (0, 1, (0, 0), (1, 1)) for k, v in conv.args.items() if k in ("stride", "dilation"))  \
        and conv.args.get("padding") in (0, (0, 0), None)


_RUN_LEAD = 32  # ops a hand-written run may compute before reading its parameters (a norm's statistics)


def _run_start(cs: list[Op], r: Op, i0: int, lo: int, hi: int, rec: OpRecorder, tol: Tolerance | None) -> int:
    """Where the hand-written run ``cs[lo:hi]`` (the ops reading ``r``'s parameters) begins: the
    latest op after ``i0`` from which the ops up to ``hi`` read one activation and compute what
    ``r``, re-run on it, computes (a layer norm's mean, variance, eps add and square root before its
    scale). By name, the eps add would pair with a residual add the candidate lacks; ``lo`` where
    no earlier start computes it (the run differs: its variants are told apart later)."""
    if tol is None or r.call is None:
        return lo
    for start in reversed(range(max(i0, lo - _RUN_LEAD), lo)):
        x = _span_input(rec, cs[start:hi])
        if x is None or tuple(x.shape) != r.in_shape:
            continue
        expected = _rerun(r, x)
        if expected is not None and _outputs_agree(cs[hi - 1].outputs[:1], [expected], tol):
            return start
    return lo


def _by_name(cs: list[Op], rs: list[Op], i0: int, i1: int, j0: int, j1: int) -> list[tuple[str, int, int, int, int]]:
    """Opcodes pairing ``cs[i0:i1]`` with ``rs[j0:j1]`` by op name, in stream positions; a cast that
    only rounds (:func:`_lone_cast`) is left unpaired, never paired with an op computing something."""
    sm = difflib.SequenceMatcher(None, [o.name for o in cs[i0:i1]], [o.name for o in rs[j0:j1]], autojunk=False)
    codes = []
    for tag, a1, a2, b1, b2 in sm.get_opcodes():
        codes += _casts_apart(cs, rs, a1 + i0, a2 + i0, b1 + j0, b2 + j0) if tag == "replace" \
            else [(tag, a1 + i0, a2 + i0, b1 + j0, b2 + j0)]
    return codes


def _casts_apart(cs: list[Op], rs: list[Op], i1: int, i2: int, j1: int, j2: int) -> list[tuple[str, int, int, int, int]]:
    """A ``replace`` of ``cs[i1:i2]`` by ``rs[j1:j2]`` with each lone cast in it (:func:`_lone_cast`)
    taken out as unpaired, so that the ops around it pair with each other."""
    lone_c, lone_r = (lambda i: _lone_cast(cs[i], rs)), (lambda j: _lone_cast(rs[j], cs))
    codes, i, j = [], i1, j1
    while i < i2 or j < j2:
        if i < i2 and lone_c(i):
            codes, i = codes + [("delete", i, i + 1, j, j)], i + 1
        elif j < j2 and lone_r(j):
            codes, j = codes + [("insert", i, i, j, j + 1)], j + 1
        else:
            a = next((k for k in range(i, i2) if lone_c(k)), i2)
            b = next((k for k in range(j, j2) if lone_r(k)), j2)
            codes.append(("replace" if a > i and b > j else "delete" if a > i else "insert", i, a, j, b))
            i, j = a, b
    return codes


def _lone_cast(op: Op, others: list[Op]) -> bool:
    """Whether ``op`` is a cast that only rounds (to float32 and back inside a float64 run: timm's
    ``posemb.float()`` around a resize) and the other side casts to no such dtype: it has no twin
    there, and pairing it with an op that computes something would hide that op's own difference."""
    if not _rounding_only(op):
        return False
    return not any(_rounding_only(o) and o.outputs[0].dtype == op.outputs[0].dtype for o in others)


def _anchors(cs: list[Op], rs: list[Op], expected: Expected | None, rec: OpRecorder,
             folds: Sequence[tuple[int, int, int]] = ()) -> list[tuple[int, int, int]]:
    """``(lo, hi, j)``: the candidate's ops ``cs[lo:hi]`` pair with the reference's ``rs[j]``, each
    reading parameters that hold what ``rs[j]`` reads and no other reference op's (``rs[j]`` reading
    none of another candidate op's): one op, or a hand-written run from its first such op to its
    last, with the ops after it that read only what the run made (its final add); and each stored
    fold of a batch norm (``folds``), whose tensors hold no tensor of the norm's. The longest chain
    of them in order on both sides."""
    # a lone cast reads a parameter only to round it: the op computing from what it made is the twin
    mine = [[] if _lone_cast(c, rs) else _mapped_values(c, expected) for c in cs]
    theirs = [[] if _lone_cast(r, cs) else list(r.param_values.values()) for r in rs]
    links: dict[int, set[int]] = {}
    for i, a in enumerate(mine):
        for j, b in enumerate(theirs):
            if a and b and _any_alike(a, b):
                links.setdefault(i, set()).add(j)
    readers: dict[int, list[int]] = {}
    for i, js in links.items():
        if len(js) == 1:
            readers.setdefault(next(iter(js)), []).append(i)
    spans = []
    for j, group in readers.items():
        if any(j in js for i, js in links.items() if len(js) > 1):
            continue
        lo, hi = min(group), max(group) + 1
        if len(group) == 1:
            lo = _named_consumer(cs, rs[j], lo, links, rec)
            spans.append((lo, lo + 1, j))
        elif _connected(rec, cs, lo, hi):
            spans.append((lo, _run_end(rec, cs, lo, hi), j))
    spans = [s for s in spans if all(s[1] <= lo or s[0] >= hi for lo, hi, _ in folds)
             and all(s[2] != j for _, _, j in folds)]
    return _increasing_chain(sorted([*spans, *folds]))


def _stored_folds(cs: list[Op], rs: list[Op], cand: _Side, ref: _Side, tol: Tolerance) -> list[tuple[int, int, int]]:
    """``(lo, hi, j)``: each batch norm the candidate stores folded, ``x * scale + shift`` with a
    scale and a shift of its own (``cs[lo]`` the mul, ``cs[hi - 1]`` the add reading it alone), and
    the one eval-mode batch norm ``rs[j]`` of the reference it stands for: receiving what the mul
    receives, or folding into what the two hold. Its tensors hold none of the norm's, so nothing
    else anchors it, and by name the mul would twin the norm and the shift's add a residual add
    that a bug after the fold (the add dropped, a ReLU moved) leaves unpaired. Each such add is
    marked with the two tensors' names (``Op.folded``): an op found missing after it is placed by them."""
    spans = []
    for lo, mul in enumerate(cs):
        add = _sole_reader(cand.rec, cs, mul) if mul.name == "mul" and len(mul.input_ids) == 1 else None
        if add is None or add.name != "add" or len(add.params) != 1 or len(mul.params) != 1:
            continue
        twins = [j for j, r in enumerate(rs) if _folded_twin(mul, r, cand, ref, tol)]
        if len(twins) == 1:
            spans.append((lo, next(k for k, op in enumerate(cs) if op is add) + 1, twins[0]))
            add.folded = (*mul.params.values(), *add.params.values())
    return spans


def _folded_twin(mul: Op, r: Op, cand: _Side, ref: _Side, tol: Tolerance) -> bool:
    """Whether the stored fold ``mul`` opens (:func:`_stored_folds`) stands for the batch norm ``r``:
    of as many channels, it receives what ``r`` receives, or holds what ``r`` folds into."""
    tensors = _fold_tensors(mul, r, cand.rec)
    if tensors is None:
        return False
    if not any(wrong.any() for _, _, wrong, *_ in tensors):
        return True
    given, received = cand.rec.passed(mul.input_ids[0], mul.index), ref.rec.passed(r.input_ids[0], r.index)
    return given is not None and received is not None and _outputs_agree([given], [received], tol)


def _named_consumer(cs: list[Op], r: Op, i: int, links: dict[int, set[int]], rec: OpRecorder) -> int:
    """The op to pair with ``r`` where ``cs[i]`` reads what ``r`` reads but is another op: the first
    later op of ``r``'s name into which ``cs[i]``'s result flows and whose parameters hold none of
    the reference's (a position bias table resized by ``interpolate`` before it is the mask of the
    attention that, on the reference side, reads the table itself); else ``i``."""
    if cs[i].name == r.name:
        return i
    for k in range(i + 1, len(cs)):
        if cs[k].name == r.name and k not in links and cs[i].index in _upstream(rec, cs[k]):
            return k
    return i


def _connected(rec: OpRecorder, cs: list[Op], lo: int, hi: int) -> bool:
    """Whether every op of ``cs[lo:hi]`` after the first reads what an op before it there made: one
    computation written out, not ops side by side (a position table added in two slices, to the
    patches and to the class token, before they are joined)."""
    made = {cs[lo].index}
    for op in cs[lo + 1:hi]:
        if not any(_made_by(rec, t, op, made) for t in op.input_ids):
            return False
        made.add(op.index)
    return True


def _run_end(rec: OpRecorder, cs: list[Op], lo: int, hi: int) -> int:
    """``hi`` moved past the ops after ``cs[lo:hi]`` that join two or more of what those ops made
    (through views: ``x * inv + shift[:, None, None]``), and nothing else: an activation after the
    run reads one value, and is the next op."""
    made = {op.index for op in cs[lo:hi]}
    while hi < len(cs) and len(set(cs[hi].input_ids)) > 1 and not cs[hi].params \
            and all(_made_by(rec, t, cs[hi], made) for t in cs[hi].input_ids):
        made.add(cs[hi].index)
        hi += 1
    return hi


def _made_by(rec: OpRecorder, tensor_id: int, reader: Op, made: set[int]) -> bool:
    """Whether ``reader``'s input ``tensor_id`` is the output of an op in ``made`` (by index), through views."""
    source = _source(rec, tensor_id, reader.index)
    return source is not None and source.index in made


def _mapped_values(c: Op, expected: Expected | None) -> list[torch.Tensor]:
    """The parameters ``c`` reads, as the weight map puts them where it puts them (else as stored)."""
    mapped = [expected(name) if expected is not None else None for name in c.params.values()]
    return [c.param_values[key] if value is None else value for key, value in zip(c.params, mapped)]


def _any_alike(mine: list[torch.Tensor], theirs: list[torch.Tensor]) -> bool:
    """Whether one of ``mine`` holds the values of one of ``theirs`` (in any layout)."""
    for a in mine:
        for b in theirs:
            if a.numel() != b.numel() or a.numel() < 2:
                continue
            pair = _in_one_layout(a, b)
            if pair is not None and torch.equal(pair[0], pair[1].to(pair[0].dtype)):
                return True
    return False


def _increasing_chain(spans: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """The longest sub-list of ``spans`` (sorted) in which each begins after the one before ends and
    pairs with a later reference op."""
    best: list[list[tuple[int, int, int]]] = []
    for span in spans:
        before = [chain for chain in best if chain[-1][1] <= span[0] and chain[-1][2] < span[2]]
        best.append(max(before, key=len, default=[]) + [span])
    return max(best, key=len, default=[])


def _feeding(pending: list[dict], unpaired: dict[int, tuple[bool, Op]], c: Op, r: Op, cand: _Side,
             ref: _Side, tol: Tolerance) -> list[dict]:
    """The pending findings that can explain the pair ``c``/``r``: an unpaired op whose result does
    not flow into its side's op of the pair (a position bias computed before the projections, to be
    added after them) is no cause of their difference, nor is one whose result reaches it only
    through operands that hold what the other side's op receives (a mask built with
    ``masked_fill(~keep, -inf)`` where the reference's attention converts a padding mask itself)."""
    reach = {True: _upstream(cand.rec, c), False: _upstream(ref.rec, r)}
    return [f for f in pending if id(f) not in unpaired or unpaired[id(f)][1].index in reach[unpaired[id(f)][0]]
            and not _through_agreeing(*unpaired[id(f)], c, r, cand, ref, tol)]


def _through_agreeing(mine: bool, op: Op, c: Op, r: Op, cand: _Side, ref: _Side, tol: Tolerance) -> bool:
    """Whether ``op``, unpaired on the candidate's side (``mine``) or the reference's, reaches its
    side's op of the pair ``c``/``r`` only through operands that agree with the other side's: each
    activation input it computes holds the values of one the other op receives, and, where it reaches
    the op past them (an attention's scores), both attentions receive one mask."""
    (side, own), (other, twin) = ((cand, c), (ref, r)) if mine else ((ref, r), (cand, c))
    theirs = [other.rec.passed(i, twin.index) for i in twin.input_ids]
    through = [i for i in dict.fromkeys(own.input_ids) if _reaches(side.rec, op, i, own.index)]
    for i in through:
        value = side.rec.passed(i, own.index)
        if value is None or not any(t is not None and _outputs_agree([value], [t], tol) for t in theirs):
            return False
    if not through or _reaches_past(side.rec, op, own):
        return c.mask is not None and r.mask is not None and not _mask_findings("", c, r, tol)
    return True


def _reaches(rec: OpRecorder, op: Op, tensor_id: int, before: int) -> bool:
    """Whether ``op``'s result flows into the tensor ``tensor_id`` as read at op index ``before``."""
    source = rec.producer(tensor_id, before)
    return source is not None and (source.index == op.index or op.index in _upstream(rec, source))


def _reaches_past(rec: OpRecorder, op: Op, own: Op) -> bool:
    """Whether ``op``'s result flows into ``own`` otherwise than through its activation inputs: into
    what a folded op absorbed (the mask added to an attention's scores)."""
    return op.index in _upstream(rec, own, stop=set(own.input_ids))


def _upstream(rec: OpRecorder, op: Op, stop: Collection[int] = ()) -> set[int]:
    """Indices of the recorded ops whose results flow into ``op``, not through the tensors ``stop``."""
    seen: set[int] = set()
    # a folded attention reads q, k and v; the product it stands for, the mask added to the scores too
    todo = [(i, op.index) for i in {*op.input_ids, *rec.ops[op.index].input_ids} if i not in stop]
    while todo:
        tensor_id, before = todo.pop()
        source = rec.producer(tensor_id, before)
        if source is not None and source.index not in seen:
            seen.add(source.index)
            todo += [(i, source.index) for i in source.input_ids if i not in stop]
    return seen


def _located(findings: list[dict], c: Op, r: Op, cs: list[Op], ref_name: str) -> list[dict]:
    """Findings on an op that no submodule of the candidate runs (a port written as functions) say
    which call it is, since their module does not: the reference module that runs its twin and the
    op's place among the candidate's calls of that name (``layer_norm call 2 of 5``)."""
    calls = [op.index for op in cs if op.name == c.name]
    twin = r.scope if _same_operands(c, r) else ""  # else the two are no twins: ops of other layers paired
    if c.scope or not (twin or len(calls) > 1):
        return findings
    where = []
    if twin:
        twin = f"{ref_name}.{r.scope}" if ref_name and ref_name != "<root>" else r.scope
        where.append(f"its twin is the reference's {twin}")
    if len(calls) > 1:
        where.append(f"the candidate's {c.name} call {calls.index(c.index) + 1} of {len(calls)}")
    for finding in findings:
        finding["text"] += f" ({'; '.join(where)})"
    return findings


def _same_operands(c: Op, r: Op) -> bool:
    """Whether the parameters both ops receive hold the same values, in one layout."""
    for key, r_key in _paired_params(c, r):
        pair = _in_one_layout(c.operands.get(key, c.param_values[key]), r.operands.get(r_key, r.param_values[r_key]))
        if pair is None or not torch.equal(pair[0], pair[1].to(pair[0].dtype)):
            return False
    return True


def _identical(c: list[torch.Tensor], r: list[torch.Tensor]) -> bool:
    return len(c) == len(r) and all(a.shape == b.shape and torch.equal(a, b.to(a.dtype)) for a, b in zip(c, r))


def _difference(c: list[torch.Tensor], r: list[torch.Tensor]) -> str:
    """``max_abs 1.2e-03``, in the layout that best holds the reference's values where the shapes
    differ (an NHWC result against NCHW is no difference), or the shapes when no layout fits. Words
    only: the layout found is not remembered as agreed (localization tries those first)."""
    if c and r and c[0].shape != r[0].shape:
        adapter = find_adapter(c[0], r[0], remember=False)
        if adapter is None:
            return f"shape {tuple(c[0].shape)} against the reference's {tuple(r[0].shape)}"
        return f"max_abs {_max_err([adapter.apply(c[0])], r):.3e} ({adapter.description})"
    return f"max_abs {_max_err(c, r):.3e}"


def _max_err(c: list[torch.Tensor], r: list[torch.Tensor]) -> float:
    if not c or not r or c[0].shape != r[0].shape:
        return float("nan")
    return measure(c[0], r[0]).max_abs


# -- module attributes -------------------------------------------------------------------------
_PLAIN = (bool, int, float, str, type(None))


def _settings(m: nn.Module) -> dict[str, Any]:
    out = {}
    for k, v in vars(m).items():
        if k.startswith("_"):
            continue
        v = _plain(v)
        if isinstance(v, _PLAIN) or (isinstance(v, tuple) and all(isinstance(x, _PLAIN) for x in v)):
            out[k] = v
    return out


_TRAINING_ONLY = frozenset({"momentum"})


def _build(m: nn.Module) -> tuple:
    """What a renamed twin must share: setting names, own tensor shapes, number of children."""
    return frozenset(_settings(m)), tuple(_own_shapes(m)), len(list(m.children()))


def _own_shapes(m: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return sorted((k, tuple(t.shape)) for k, t in (*m.named_parameters(recurse=False), *m.named_buffers(recurse=False))
                  if t is not None)


def attribute_diff(candidate: nn.Module, reference: nn.Module, prefix: str, idle: set[str] = frozenset()) -> list[dict]:
    """Settings (eps, approximate, stride, groups, inplace...) that differ between twin submodules;
    ``idle``: candidate submodules never called in the run (a shortcut branch dropped), whose
    settings compute nothing and whose pairing by build is no twin."""
    cmods, rmods = dict(candidate.named_modules()), dict(reference.named_modules())
    pairs = [(n, cmods[n], rmods[n]) for n in cmods if n in rmods]
    left_r = [(n, m, _build(m)) for n, m in rmods.items() if n not in cmods]
    for n, m in ((n, m) for n, m in cmods.items() if n not in rmods):
        # renamed twins: in order, those with the same setting names, own tensor shapes and children
        build = _build(m)
        idx = next((i for i, (_, _, b) in enumerate(left_r) if b == build), None)
        if idx is not None:
            pairs.append((n, m, left_r.pop(idx)[1]))
    out = []
    for name, c, r in pairs:
        if name in idle:
            continue
        cs, rs = _settings(c), _settings(r)
        where = f"{prefix}.{name}" if name and prefix != "<root>" else (name or prefix)
        for key in sorted(set(cs) & set(rs)):
            if _training_only(key, c, r) and not (c.training or r.training):
                continue  # a BatchNorm's momentum, a dropout's p change nothing in eval mode
            if key == "training" and not (reads_training(c) or reads_training(r)):
                continue  # a module whose code never reads the flag computes the same in either mode
            if key in _LAYOUT_ONLY:
                continue  # ReLU(inplace=True) writes the same values, only over its input
            if not _same_value(cs[key], rs[key]):
                out.append(_finding(where, "attribute", None, key, cs[key], rs[key],
                                    f"{where}: {getattr(c, 'shown_as', type(c).__name__)}.{key} {_show(cs[key])} in the candidate, "
                                    f"{_show(rs[key])} in the reference"))
    return out


def _training_only(key: str, c: nn.Module, r: nn.Module) -> bool:
    """Whether setting ``key`` of twins ``c``/``r`` acts in training only: a momentum, or the ``p`` of
    a dropout (which passes its input through in eval mode; not a norm's ``p``)."""
    dropout = nn.modules.dropout._DropoutNd
    return key in _TRAINING_ONLY or key == "p" and isinstance(c, dropout) and isinstance(r, dropout)


def reads_training(m: nn.Module) -> bool:
    """Whether code of ``m``'s class (or a forward set on the instance) reads ``training``: a
    dropout or a batch norm does, an activation does not (``nn.Module``'s own ``train`` not counted)."""
    functions = [f for klass in type(m).__mro__ if klass not in (nn.Module, object) for f in vars(klass).values()]
    functions.append(vars(m).get("forward"))
    return any("training" in _names_read(getattr(f, "__func__", f)) for f in functions)


def _names_read(f: Any) -> set[str]:
    code = getattr(f, "__code__", None)
    if code is None:
        return set()
    nested = (c for c in code.co_consts if isinstance(c, types.CodeType))  # closures and comprehensions
    return {*code.co_names, *(n for c in nested for n in c.co_names)}


# -- entry points ------------------------------------------------------------------------------
def diagnose_modules(
    candidate: nn.Module, reference: nn.Module, args: tuple, kwargs: dict, *, name: str = "<root>",
    candidate_inputs: tuple[tuple, dict] | None = None, dtype: torch.dtype = torch.float64,
    root: nn.Module | None = None, expected: Expected | None = None, ref_name: str = "",
    received: torch.Tensor | None = None, reads: Collection[str] | None = None,
) -> list[dict]:
    """Findings for two twin modules run on the same ``args``/``kwargs`` (most specific first).

    ``candidate_inputs``: the candidate's own ``(args, kwargs)`` when it cannot take the
    reference's. The modules are run on copies at ``dtype`` (see module docstring). ``root``: the
    whole reference model, where an operand's values are looked for (swapped weights);
    ``expected``: what the weight map puts into a candidate parameter (by name relative to ``candidate``);
    ``ref_name``: the reference twin's name; ``received``: the first tensor the candidate received
    in the comparison, where it differs from the reference's (an op the candidate ran before it);
    ``reads``: the reference tensors (relative to ``reference``) the candidate's are mapped from,
    where ``reference`` runs more than the candidate does: only its ops from the first reading
    one of them are compared (:func:`_span`), and none at all where no op reads one.
    """
    (c_rec, c_stream, c_out), (r_rec, r_stream, r_out), run_dtype = _run_both(
        candidate, candidate_inputs or (args, kwargs), reference, (args, kwargs), dtype)
    tol = _with_rounding(DEFAULT_TOLERANCES.get(run_dtype, DEFAULT_TOLERANCES["float32"]), c_rec, r_rec)
    if reads is not None:
        r_stream = _span(r_stream, set(reads))
        if not r_stream:
            return []
    cand = _Side(c_rec, c_stream, flatten_tensors(c_out))
    ref = _Side(r_rec, r_stream, flatten_tensors(r_out))
    findings = compare_streams(name, cand, ref, tol, reference, root, expected, ref_name)
    given = next(iter(flatten_tensors((args, kwargs)).values()), None)
    findings = _applied_before(findings, ref, given, received, tol)
    findings += attribute_diff(candidate, reference, name, c_rec.hooked - c_rec.called)
    return _rank(_dedupe(findings))


def _span(stream: list[Op], reads: set[str]) -> list[Op]:
    """``stream`` from its first op reading one of ``reads`` (the reference tensors the candidate's
    are mapped from), [] where none does: the ops before it are the reference's work before the
    candidate's (a whole model's features before an untwinned classifier), not ops the candidate
    left out, and paired by name they would take the candidate's ops for theirs."""
    first = next((k for k, op in enumerate(stream) if reads & set(op.params.values())), None)
    return [] if first is None else stream[first:]


_ROUNDING_ULPS = 8  # rounding left in a copy: units in the last place of the compared dtype, of the largest value


def _with_rounding(tol: Tolerance, *recs: OpRecorder) -> Tolerance:
    """``tol`` widened, for copies re-run at a wider dtype than the models were compared at (their own,
    in ``rec.recast``), by what that dtype rounds off: a port's weights folded or converted there (a
    batch norm folded into a scale and a shift at float32) differ from the reference by it, and no
    port at that dtype can do better. Still far below that dtype's tolerance: an error the comparison
    saw is more than rounding."""
    native = [rec.recast[1] for rec in recs if rec.recast is not None and rec.recast[1].is_floating_point]
    if not native:
        return tol
    rtol = _ROUNDING_ULPS * max(torch.finfo(d).eps for d in native)
    return Tolerance(atol=tol.atol, rtol=max(tol.rtol, rtol))


def _applied_before(findings: list[dict], ref: _Side, given: torch.Tensor | None, received: torch.Tensor | None,
                    tol: Tolerance) -> list[dict]:
    """An op missing in the candidate module that the candidate ran before it, on the module's input
    (a ReLU applied before the norm where the reference applies it after): the module received
    ``received``, which is what the reference's op, run again on ``given`` (the reference's input),
    gives. Said as one op applied in another place, not as an op missing."""
    if given is None or received is None or not given.is_floating_point():
        return findings
    out = []
    for f in findings:
        op = next((r for r in ref.stream if f["kind"] == "missing_op" and r.name == f["op"] and r.call is not None
                   and " in the candidate " in f["text"] and _gives(r, given, received, tol)), None)
        if op is None:
            out.append(f)
            continue
        where = f["text"].split(" in the candidate ", 1)[1].split(";", 1)[0]
        text = (f"{f['module']}: {_op_label(op)} applied in another place than the reference's: the candidate "
                f"applies it before the module (the module receives the reference's input after {op.name}), the "
                f"reference applies it {where}")
        out.append({**f, "candidate": f"{op.name} (before the module)", "text": text})
    return out


def _gives(op: Op, given: torch.Tensor, received: torch.Tensor, tol: Tolerance) -> bool:
    """Whether ``op``'s call, made again on ``given``, holds ``received``'s values (and changes
    ``given``: an op that returns its input says nothing of where it ran)."""
    dtype = op.outputs[0].dtype if op.outputs else given.dtype
    x = given.detach().to(dtype)
    y = _rerun(op, x)
    # what the candidate received was computed at the comparison's dtype: held to its rounding
    held = DEFAULT_TOLERANCES.get(str(received.dtype).removeprefix("torch."), tol)
    return y is not None and y.shape == received.shape and not _holds(x, y, tol) \
        and _holds(received.detach().to(dtype), y, held if held.rtol > tol.rtol else tol)


def _dedupe(findings: Iterable[dict]) -> list[dict]:
    seen, out = set(), []
    for f in findings:
        key = (f["module"], f["kind"], f["op"], f["argument"], str(f["candidate"]), str(f["reference"]))
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _rank(findings: list[dict]) -> list[dict]:
    """By kind (:data:`_RANK`), a twin left in training mode first: its random drop or batch
    statistics make the ops differ, not the other way round; a precision difference (a softmax upcast)
    after every other. Stable: stream order within a kind."""
    order = {k: i for i, k in enumerate(_RANK)}
    return sorted(findings, key=lambda f: (not _training(f), _precision_only(f), order[f["kind"]]))


def _training(finding: dict) -> bool:
    """Whether ``finding`` is a module's ``training`` flag."""
    return finding["kind"] == "attribute" and finding["argument"] == "training"


def _mapped(weights: Any, root: nn.Module | None, prefix: str) -> Expected | None:
    """A parameter's value as ``weights`` (a :class:`harness.WeightMap`) maps it from ``root``."""
    if weights is None or root is None:
        return None
    state = {**dict(root.named_parameters()), **dict(root.named_buffers())}

    def expected(name: str) -> torch.Tensor | None:
        key = name if prefix == "<root>" else f"{prefix}.{name}"
        try:
            value = weights.expected(key, state)
        except (ValueError, RuntimeError, IndexError):
            return None
        return None if value is None else value.detach()

    return expected


def diagnose(match: Any, root: nn.Module | None = None, weights: Any = None,
             reads: Collection[str] | None = None) -> list[dict]:
    """Findings for the culprit's :class:`harness.align.Match` (full-mode records), or [].

    Both twins run on the reference's recorded inputs when the candidate's arguments have the same
    structure; otherwise each runs on its own (then the first ops may already differ by value).
    ``reads``: as for :func:`diagnose_modules`."""
    if match is None:
        return []
    cand, ref = match.candidate, match.reference
    if cand.module is None or ref.module is None:
        return []  # summary mode: no module or inputs kept to re-run
    if type(ref.module).__name__ == "RecordedModule":  # a trace file: settings kept, no code to run
        return _rank(_dedupe(attribute_diff(cand.module, ref.module, cand.name)))
    own = (cand.args, cand.kwargs)
    # the same arguments, not only the same tensors: a candidate also taking a mask it is given as
    # None keeps its own arguments, with the reference's tensors in them
    same_structure = len(cand.args) == len(ref.args) and \
        flatten_tensors(cand.args).keys() == flatten_tensors(ref.args).keys() and \
        cand.kwargs.keys() == ref.kwargs.keys() and all(
            tuple(a.shape) == tuple(b.shape) for a, b in zip(flatten_tensors((cand.args, cand.kwargs)).values(),
                                                           flatten_tensors((ref.args, ref.kwargs)).values()))
    received, given = (next(iter(flatten_tensors(side).values()), None) for side in (own, (ref.args, ref.kwargs)))
    fed = received is not None and given is not None and received.is_floating_point() and not _near(received, given)
    findings = diagnose_modules(cand.module, ref.module, ref.args, ref.kwargs, name=cand.name,
                                candidate_inputs=None if same_structure and not _kept_shape_relaid(own, ref)
                                else _given_reference_tensors(own, ref),
                                root=root,
                                expected=_mapped(weights, root, cand.name), ref_name=ref.name,
                                received=received if fed else None, reads=reads)
    findings = _named_parts(findings, cand.name, cand.module, ref.module)
    return _named_tensors(_named_tensors(findings, cand.module, r"(?<!the reference's )(?<!\.)", ""),
                          ref.module, "the reference's ", re.escape(ref.name) + r"\.")


_NEAR = 0.1  # relative difference up to which a candidate's input tensor is taken for the reference's


def _given_reference_tensors(own: tuple[tuple, dict], ref: Any) -> tuple[tuple, dict]:
    """The candidate's own arguments (its flags, its keyword names) with each tensor replaced by the
    reference's in the same place, in the candidate's layout (an NHWC block against an NCHW one),
    where the two pair one to one by near values: an error from upstream, or float32 rounding,
    must not make the re-run's first ops differ."""
    # one tensor passed several times (``mha(x, x, x)``) is one input: it pairs with one of the
    # reference's, and stays one object (its self-attention path)
    mine = list({id(t): t for t in flatten_tensors(own).values()}.values())
    theirs = list(flatten_tensors((ref.args, ref.kwargs)).values())
    given = [_in_layout_of(b, a) for a, b in zip(mine, theirs)] if len(mine) == len(theirs) else [None]
    if any(t is None for t in given) and len(mine) == len(theirs) and all(
            a.numel() == b.numel() and a.dtype == b.dtype for a, b in zip(mine, theirs)) \
            and len({a.numel() for a in mine}) == len(mine):
        # an error from upstream leaves the candidate's own inputs far from any layout of the
        # reference's: where each pairs with the one reference tensor of its size, the layout
        # closest to them stands, as for the re-run that found the module making its own error
        given = [_in_layout_of(b, a, near=False) for a, b in zip(mine, theirs)]
    if any(t is None for t in given):
        return own
    by_id = {id(a): g for a, g in zip(mine, given)}
    return map_tensors(own, lambda t: by_id[id(t)])


def _in_layout_of(theirs: torch.Tensor, mine: torch.Tensor, *, near: bool = True) -> torch.Tensor | None:
    """The reference's tensor brought into the layout of the candidate's, where it then holds near
    values (``near=False``: in its closest layout, whatever its values); None otherwise."""
    if theirs.dtype == mine.dtype and theirs.is_floating_point() and (theirs.shape != mine.shape or not _near(mine, theirs)):
        # of one shape, a permutation keeping it (NHWC against NCHW when C == H == W) may relate them
        relaid = in_layout_of(theirs, mine)
        if relaid is not None:
            theirs = relaid if theirs.shape != mine.shape or _nearer(mine, relaid, theirs) else theirs
    return theirs if _near(mine, theirs) or not near and theirs.shape == mine.shape else None


def _kept_shape_relaid(own: tuple[tuple, dict], ref: Any) -> bool:
    """Whether a tensor the candidate received is nearer the reference's of one shape through a
    permutation keeping that shape (an NHWC block against an NCHW one where C == H == W, whatever
    error it carries from upstream) than as it is: given as it is, the reference's would be read in
    the wrong layout, and the re-run's first ops differ."""
    pairs = zip(flatten_tensors(own).values(), flatten_tensors((ref.args, ref.kwargs)).values())
    return any(a.is_floating_point() and a.shape == b.shape and not _near(a, b)
               and _nearer(a, _in_layout_of(b, a, near=False), b) for a, b in pairs)


def _nearer(mine: torch.Tensor, one: torch.Tensor, other: torch.Tensor) -> bool:
    """Whether ``one`` is clearly nearer ``mine`` than ``other`` is (half the distance)."""
    return bool((mine - one).norm() < 0.5 * (mine - other).norm())


def _near(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return bool(torch.equal(a, b))
    return bool((a - b).norm() <= _NEAR * b.norm())


def _named_parts(findings: list[dict], name: str, *modules: nn.Module) -> list[dict]:
    """Findings inside a twin that runs several calls as one (``scope_names``: part -> call name)
    name the calls, not the parts."""
    parts = {f"{name}.{part}": call for m in modules for part, call in getattr(m, "scope_names", {}).items()}
    for finding in findings:
        for part, call in parts.items():
            if finding["module"] == part or finding["module"].startswith(part + "."):
                finding["text"] = finding["text"].replace(part, call, 1)
                finding["module"] = call + finding["module"][len(part):]
    return findings


def _named_tensors(findings: list[dict], module: nn.Module, lead: str, twin: str) -> list[dict]:
    """The tensors and calls of a twin that runs several calls as one, as the model names them
    (``1.running_var``), not by the twin's part names (``head.running_var``), which exist in neither
    model; ``lead``: what precedes one side's names in a text, ``twin``: that side's twin name."""
    for part, call in getattr(module, "scope_names", {}).items():
        pattern = re.compile(rf"({lead})(?:{twin})?\b{re.escape(part)}\b")
        for finding in findings:
            finding["text"] = pattern.sub(lambda m: m.group(1) + call, finding["text"])
    return findings


def culprit_diagnosis(rows: Iterable[Any], culprit: str | None, root: nn.Module | None = None,
                      weights: Any = None, candidate: nn.Module | None = None) -> list[dict]:
    """:func:`diagnose` for the culprit's row (the first ``introduced`` row with that name), or [];
    ``root``: the reference model; ``weights``: the weight map between the two, if any. A module
    inside the culprit left in training mode, where the reference runs in eval mode, is named
    first: its random drop or batch statistics are the difference, whatever the ops then show."""
    if culprit is None:
        return []
    found = _culprit_findings(list(rows), culprit, root, weights, candidate)
    named = {f["module"] for f in found if _training(f)}
    found += [f for f in _left_training(candidate, culprit, root) if f["module"] not in named]
    # the culprit's own flag first, then a dropout's or a norm's: a module around it may read the
    # flag to no effect (an attention whose dropout probability is 0)
    return sorted(found, key=lambda f: (not _training(f), f["module"] != culprit,
                                        not _acts_in_training(candidate, f["module"])))


def _acts_in_training(model: nn.Module | None, name: str) -> bool:
    """Whether candidate module ``name`` changes what it computes in training: a dropout with a
    probability, a batch or instance norm."""
    try:
        module = model.get_submodule("" if name == "<root>" else name) if model is not None else None
    except AttributeError:
        return False
    return isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0 or isinstance(
        module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm))


_TRAINING_NAMED = 3  # modules left in training mode named in one diagnosis, at most


def _left_training(candidate: nn.Module | None, culprit: str, root: nn.Module | None) -> list[dict]:
    """Findings for the modules inside the culprit that read ``training`` and are in training mode
    while the reference model is in eval mode (a dropout, a stochastic depth, a batch norm)."""
    if candidate is None or root is None or root.training:
        return []
    module = candidate if culprit == "<root>" else candidate.get_submodule(culprit)
    out = []
    for name, m in module.named_modules():
        if m.training and reads_training(m):
            where = culprit if not name else name if culprit == "<root>" else f"{culprit}.{name}"
            out.append(_finding(where, "attribute", None, "training", True, False,
                                f"{where}: {type(m).__name__} runs in training mode (training True) where the reference "
                                f"model runs in eval mode: what it does only in training (a random drop, batch "
                                f"statistics) is active; call .eval() on it"))
    return out[:_TRAINING_NAMED]


def _culprit_findings(rows: list[Any], culprit: str, root: nn.Module | None, weights: Any,
                      candidate: nn.Module | None) -> list[dict]:
    """:func:`culprit_diagnosis` without the modules left in training mode."""
    row = next((r for r in rows if r.candidate == culprit and r.status == "introduced"), None) \
        or next((r for r in rows if r.candidate == culprit), None)
    if row is None:
        # a culprit without a twin: first whether it holds other values than the map puts there
        # (a class token changed in embeddings the reference has no module for); that is certain
        try:
            held = _held_values(candidate, culprit, root, weights)
        except Exception:  # the diagnosis explains; it must never cost the verdict
            held = []
        if held:
            return held
    fed_otherwise = row is not None and _fed_otherwise(row)
    if fed_otherwise and not _without_twin_module(row):
        # fed other values (an error upstream): run on the reference's inputs, it may show a
        # difference of its own (an activation's flavour); a mere "another result" may come of
        # inputs it should not get (windows not shifted), and its ancestor is asked below
        try:
            own = diagnose(row.match, root, weights)
        except Exception:  # the diagnosis explains; it must never cost the verdict
            own = []
        if any(f["kind"] != "value" for f in own):
            return (_explained_by_ancestor(rows, culprit, root, weights) or own) if _partial_twin(row, own) else own
    reshaped = row is not None and not fed_otherwise and _fed_other_shape(row)
    own_row = row
    if row is None or _without_twin_module(row) or fed_otherwise or reshaped:
        # a culprit without a twin (or twinned to a slice of another module's output, a fused
        # qkv's), fed other values than its twin (windows not shifted by the block around it), or
        # a map of another size (padded by its parent before it: the culprit's own padding, which
        # the reference does inside, differs only for that): its innermost twinned ancestor runs
        # the same code, from where the two part
        ancestors = [r for r in rows if r.match.how != "structure"
                     and (r.candidate == "<root>" or culprit.startswith(r.candidate + "."))
                     and _parameters(r.match.candidate.module) <= ANCESTOR_ELEMENTS]
        # the ancestors whose output the error reaches; where none does (a norm with a zero scale
        # after the culprit cancels it), those it vanishes in: their ops still show it, re-run
        around = [r for r in ancestors if r.status == "contains"] or ([] if row is not None else [
            r for r in ancestors if r.match.candidate.module is not None and r.match.reference.module is not None])
        row = max(around, key=lambda r: (r.candidate != "<root>", r.candidate.count(".")), default=row)
    try:
        if row is None:  # no twin to run against: what the culprit holds, against what the map puts there
            return _held_values(candidate, culprit, root, weights)
        found = diagnose(row.match, root, weights)
        if row is own_row and _partial_twin(row, found):
            wider = _explained_by_ancestor(rows, culprit, root, weights)
            return wider or found
        return found if found or not reshaped or row is own_row else diagnose(own_row.match, root, weights)
    except Exception as exc:  # the diagnosis explains; it must never cost the verdict
        return [_finding(culprit, "value", None, None, None, None,
                         f"{culprit}: no operation-level diagnosis ({type(exc).__name__}: {exc})")]


def _partial_twin(row: Any, found: list[dict]) -> bool:
    """Whether the culprit's twin, paired by shape alone, runs only a part of its computation: every
    finding is an op the candidate runs beyond it (an ``nn.MultiheadAttention`` paired with the
    output projection of an attention written in its parent's forward). Its ops say the structure
    differs, not what the bug is."""
    return row.match.how == "structure" and bool(found) and all(f["kind"] == "extra_op" for f in found)


def _explained_by_ancestor(rows: list[Any], culprit: str, root: nn.Module | None, weights: Any) -> list[dict]:
    """The findings of the innermost ancestor of ``culprit`` twinned by more than shape, which runs
    the whole computation on both sides; [] where there is none or it finds only ops of its own."""
    ancestors = [r for r in rows if r.match.how != "structure" and r.match.candidate.module is not None
                 and r.match.reference.module is not None
                 and (r.candidate == ROOT or culprit.startswith(r.candidate + "."))
                 and _parameters(r.match.candidate.module) <= ANCESTOR_ELEMENTS]
    row = max(ancestors, key=lambda r: (r.candidate != ROOT, r.candidate.count(".")), default=None)
    found = diagnose(row.match, root, weights) if row is not None else []
    return found if any(f["kind"] not in ("extra_op", "value") for f in found) else []


def _held_values(candidate: nn.Module | None, culprit: str, root: nn.Module | None, weights: Any) -> list[dict]:
    """Findings for a culprit with no twinned ancestor (embeddings that hold a class token, a
    position table): each of its tensors holding other values than the weight map puts there from
    ``root`` (``candidate``: the candidate model)."""
    if candidate is None or root is None or weights is None:
        return []
    module = candidate if culprit == "<root>" else candidate.get_submodule(culprit)
    expected, sources = _mapped(weights, root, culprit), {e.candidate: e.reference for e in weights.entries}
    out = []
    for name, t in (*module.named_parameters(), *module.named_buffers()):
        mapped = expected(name)
        key = name if culprit == "<root>" else f"{culprit}.{name}"
        if mapped is None or mapped.shape != t.shape or torch.equal(t.detach(), mapped.to(t.dtype)):
            continue
        source = "+".join(sources[key])
        entry = next(e for e in weights.entries if e.candidate == key)
        dims = _permuted_twin(t.detach(), mapped.to(t.dtype))
        if dims is not None:  # a square weight stored transposed
            laid = " as the weight map lays it out" if entry.steps else ""
            text = f"{culprit}: {name} holds the reference's {source}{laid} with its dims permuted {dims} (stored transposed?)"
            out.append(_finding(culprit, "argument", None, name, f"{name} (permuted {dims})", source, text))
            continue
        if moves := _held_reordered(module, name, t.detach(), mapped, entry, root):
            text = f"{culprit}: {name} holds the reference's {source} reordered: {moves}"
            out.append(_finding(culprit, "argument", None, name, f"{name} (reordered)", source, text))
            continue
        # another tensor's values (a class token holding the distillation token's): a swap; never
        # said of one value throughout, which any tensor of that value would match
        holds = None if _constant(t.detach()) is not None else _whose_values(
            t.detach(), root, entry.reference[0] if len(entry.reference) == 1 else "")
        if holds is not None:
            text = f"{culprit}: {name} holds the reference's {holds}, where the weight map puts {source} (swapped weights?)"
            out.append(_finding(culprit, "argument", None, name, holds, source, text))
            continue
        err = (t.detach().double() - mapped.double()).abs().max().item()
        text = f"{culprit}: {name} holds other values than the reference's {source} (max_abs difference {err:.3e})" \
               f"{_block_words(name, t.detach(), mapped)}"
        out.append(_finding(culprit, "argument", None, name, f"{name} (other values)", source, text))
    return out


_UNDONE = frozenset({"reshape", "transpose", "permute"})  # map steps that move values, and can be undone


def _held_reordered(module: nn.Module, name: str, held: torch.Tensor, mapped: torch.Tensor, entry: Any,
                    root: nn.Module) -> str | None:
    """How a tensor holds exactly the values the weight map puts there reordered along its axes (a
    stem kernel's input channels reversed: RGB read as BGR), in words: first in the reference
    tensor's own layout, the map's reshapes and permutes undone (the channels of a conv kernel
    the map flattens into a linear's columns), then as the candidate lays it out; None if neither says it."""
    state = {**dict(root.named_parameters()), **dict(root.named_buffers())}
    ref_key = entry.reference[0] if len(entry.reference) == 1 else None
    if entry.steps and ref_key in state and all(step["op"] in _UNDONE for step in entry.steps):
        reference = state[ref_key].detach()
        try:
            back = apply_steps(held, invert_steps(entry.steps, tuple(reference.shape)))
        except (ValueError, RuntimeError):
            back = None
        if back is not None and back.shape == reference.shape and (moves := _reordered_operand(
                _op_of(root, ref_key), ref_key.rsplit(".", 1)[-1], None, back, reference)):
            return moves
    return _reordered_operand(_op_of(module, name), name.rsplit(".", 1)[-1], None, held, mapped)


def _op_of(root: nn.Module, key: str) -> str:
    """The op the module holding ``key`` runs on it (``linear``, ``conv2d``), whose axes have names; "" else."""
    try:
        owner = root.get_submodule(key.rsplit(".", 1)[0]) if "." in key else root
    except AttributeError:
        return ""
    if isinstance(owner, nn.Linear):
        return "linear"
    if isinstance(owner, nn.modules.conv._ConvNd) and not owner.transposed:
        return f"conv{len(owner.kernel_size)}d"
    return ""


def _fed_otherwise(row: Any) -> bool:
    """A full-mode row whose candidate received, as its first tensor, other values than its twin's."""
    c, r = (list(flatten_tensors((side.args, side.kwargs)).values())
            for side in (row.match.candidate, row.match.reference))
    return bool(c and r) and c[0].shape == r[0].shape and c[0].is_floating_point() and not _near(c[0], r[0])


def _fed_other_shape(row: Any) -> bool:
    """A full-mode row whose candidate received, as its first tensor, a map of another shape than
    its twin's, not the same values in another layout (NHWC against NCHW): a map padded before it,
    windows cut from a map its twin's parent shifted (:mod:`harness.adapters` names that layout)."""
    c, r = (list(flatten_tensors((side.args, side.kwargs)).values())
            for side in (row.match.candidate, row.match.reference))
    if not (c and r) or c[0].shape == r[0].shape or not c[0].is_floating_point():
        return False
    if c[0].dtype != r[0].dtype:
        return True
    adapter = find_adapter(r[0], c[0], remember=False)
    # windows its twin's parent cut from a shifted map, where the candidate shifts inside: the
    # layout relating the two inputs rolls values, which only the parents' ops say
    return adapter is None or adapter.rolls


def _without_twin_module(row: Any) -> bool:
    """A full-mode row whose reference is a part of a module's output, with no module of its own."""
    return row.match.candidate.module is not None and row.match.reference.module is None


# settings that change a module's numbers, reported on a passing comparison when twins disagree on
# them: at 16 bits an eps of 1e-5 against 1e-6 rounds away, at float64 it would not
_NUMERIC_SETTINGS = frozenset({"eps", "approximate", "negative_slope", "alpha", "beta", "threshold", "min_val",
                               "max_val", "scale", "lambd"})


def numeric_setting_differences(row: Any) -> list[str]:
    """``"eps 0.001 (reference 1e-05)"`` for each numeric setting on which a confirmed row's twin
    modules disagree; [] for a row paired by shape only or against a recorded reference."""
    cand, ref = row.match.candidate.module, row.match.reference.module
    if row.match.how == "structure" or cand is None or ref is None or type(ref).__name__ == "RecordedModule":
        return []
    cs, rs = _joined_settings(cand), _joined_settings(ref)
    return [f"{key} {_show(cs[key])} (reference {_show(rs[key])})"
            for key in sorted(_NUMERIC_SETTINGS & cs.keys() & rs.keys()) if not _same_value(cs[key], rs[key])]


def _joined_settings(m: nn.Module) -> dict[str, Any]:
    """A module's settings; for a twin joined with the call after it (a norm and its activation,
    ``localize._Chain``), both parts', the first part's where both have one."""
    if hasattr(m, "scope_names"):
        return {**_settings(m.tail), **_settings(m.head)}
    return _settings(m)


def setting_notes(rows: Iterable[Any], dtype: str) -> list[str]:
    """One note naming the numeric settings (eps, approximate...) on which confirmed twins disagree,
    for a comparison that passed all the same (a difference its dtype rounds away)."""
    found = list(dict.fromkeys(f"{row.candidate} {difference}" for row in rows
                               for difference in numeric_setting_differences(row)))
    if not found:
        return []
    more = f" and {len(found) - 6} more" if len(found) > 6 else ""
    return [f"twins differ in settings that change numbers, though the outputs agree at {dtype}: "
            f"{'; '.join(found[:6])}{more}; compare at float64 to see their effect"]


EXPLAINED_ORIGINS = 4  # origins of an error explained per report: each costs two module re-runs
# an untwinned culprit is explained through an ancestor re-run at float64 with every op recorded:
# not through one holding more parameter elements than this (a whole large model)
ANCESTOR_ELEMENTS = 2**24


def _parameters(module: nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def origins_diagnosis(rows: Iterable[Any], introduced: Sequence[str], root: nn.Module | None = None,
                      weights: Any = None, candidate: nn.Module | None = None) -> list[dict]:
    """:func:`culprit_diagnosis` for each independent origin (the culprit first), up to
    ``EXPLAINED_ORIGINS``: a report with two bugs explains both."""
    rows = list(rows)
    findings: list[dict] = []
    for origin in list(dict.fromkeys(introduced))[:EXPLAINED_ORIGINS]:
        findings += culprit_diagnosis(rows, origin, root, weights, candidate)
    return _dedupe(findings)


def annotate_mismatches(rows: Iterable[Any], final: Iterable[tuple[str, torch.Tensor, torch.Tensor]],
                        outputs: dict[str, Any], tol: Tolerance) -> None:
    """Add :func:`harness.metrics.mismatch_stats` to failing rows and to the final outputs (in place)."""
    from dataclasses import replace

    from harness.metrics import mismatch_stats

    for row in rows:
        if row.passed:
            continue
        key = row.leaf.split("~")
        a = row.match.candidate.outputs.get(key[0])
        b = row.match.reference.outputs.get(key[-1])
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape:
            row.metrics = replace(row.metrics, **_row_stats(mismatch_stats(a, b, row.tolerance)))
    for key, a, b in final:
        if key in outputs and a.shape == b.shape:
            outputs[key] = replace(outputs[key], **mismatch_stats(a, b, tol))


def _row_stats(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if not k.startswith("passing_")}
