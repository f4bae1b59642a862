"""A run of residual 2×2 conv units as one autograd node that keeps about one activation per unit.

Autograd's graph of a :class:`fext.layers.ResidualConvUnit` keeps three activations of the unit's full
size for backward: the padded input (for the convolution's weight gradient), the convolution output
``y`` (for layer norm's backward) and the ReLU output (for ReLU's mask); a max pooling after the units
keeps its input and int64 indices. For the base preset that is most of a training step's memory.
:func:`run_units_lean` runs a stage's units (and its pooling, or a decoder stage's upsampling before
them) as one :class:`_LeanUnits` node that keeps only the stage's input and every unit's ``y``. Its
backward rebuilds the rest with cheap passes and no convolution (but a 1×1 shortcut's, the
upsampling's 2×2 stride-2 transposed one, and the conv of a unit whose input has at most
:data:`RECOMPUTED_CONV_MAX_CHANNELS` channels, such as the RGB image, whose ``y`` is not kept): the
upsampled map (four times the size of the input it is made from), layer norm again on ``y`` (a
deterministic kernel: the same output, mean and rstd), the ReLU mask from it, every unit's input by
re-adding the residual branches in the order of the forward pass, the pooling indices by pooling
again. It then calls the ATen backward kernels autograd's own nodes call, with the same arguments,
so the gradients are the plain graph's: bit for bit where those kernels are deterministic (CPUs;
cuDNN's may not be), to float rounding where a large batch runs in chunks of images
(:data:`CHUNK_BYTES`). Activation checkpointing, autocast (the backward
casts as autocast did in forward) and DDP see an ordinary autograd node.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

aten = torch.ops.aten


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """``x``'s memory format: channels_last or contiguous."""
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def padded_empty(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised (B, C, H+1, W+1) buffer in ``x``'s memory format whose last row and column are zero."""
    b, c, h, w = x.shape
    out = torch.empty((b, c, h + 1, w + 1), dtype=dtype or x.dtype, device=x.device, memory_format=_memory_format(x))
    # Zero the new row and column through a view in memory order: ``fill_`` on the (B, C, ...)
    # view of a channels_last tensor walks it against its strides, hundreds of times slower.
    border = out.permute(0, 2, 3, 1)  # (B, H+1, W+1, C)
    border[:, h].zero_()
    border[:, :, w].zero_()
    return out


def padded_copy(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, H, W) zero-padded to (B, C, H+1, W+1) on the right and bottom, in its memory format."""
    out = padded_empty(x)
    out[:, :, : x.shape[2], : x.shape[3]].copy_(x)
    return out


RECOMPUTED_CONV_MAX_CHANNELS = 4
"""A unit convolving at most this many input channels (the RGB image) recomputes ``y`` in backward:
a convolution that cheap costs less than keeping its 64-channel output."""

CHUNK_BYTES = 8 * 2**20
"""On CPUs a stage runs, forward and backward, on chunks of images whose largest activation takes at
most about this much memory: every buffer it allocates, kept for backward or not, is then a fraction
of a batch's and fits into the holes of glibc's heap (``fext._allocator`` keeps that heap), which
batch-sized ones of about 100 MB did not. The parameter gradients are sums over the chunks (equal
to the whole batch's to float rounding); small batches and maps are one chunk, bit for bit. GPUs (a
caching allocator, and kernels that want large batches) run the whole batch."""

_POOL = ([2, 2], [2, 2], [0, 0], [1, 1], False)  # kernel, stride, padding, dilation, ceil_mode


def _unit_params(unit: torch.nn.Module) -> list[torch.Tensor]:
    """conv weight, norm weight, norm bias[, shortcut weight, shortcut bias]: the order :class:`_LeanUnits` expects."""
    params = [unit.conv.weight, unit.norm.weight, unit.norm.bias]
    if isinstance(unit.shortcut, torch.nn.Conv2d):
        params += [unit.shortcut.weight, unit.shortcut.bias]
    return params


def run_units_lean(
    units: torch.nn.Sequential, x: torch.Tensor, pool: bool = False, upsample: torch.nn.ConvTranspose2d | None = None
) -> torch.Tensor:
    """``units(x)`` (then 2×2 max pooling if ``pool``) for plain-route ResidualConvUnits, as one lean autograd node;
    with ``upsample`` (a 2×2 stride-2 transposed convolution) ``units(upsample(x))``, the upsampled map
    made a chunk at a time and never kept (backward makes it again from ``x``, a quarter of its size).

    The same values as the modules' own forward; (B, C_in, H, W) -> (B, C_out, H, W), (H/2, W/2) pooled,
    (2H, 2W) upsampled.
    """
    per_unit = [_unit_params(unit) for unit in units]
    spec = tuple((len(params), unit.norm.eps) for params, unit in zip(per_unit, units))
    up = [] if upsample is None else [upsample.weight, upsample.bias]
    return _LeanUnits.apply((spec, pool, len(up)), x, *up, *(p for params in per_unit for p in params))


def _split(spec: tuple, flat: tuple) -> list[tuple]:
    out, i = [], 0
    for count, _ in spec:
        out.append(tuple(flat[i : i + count]))
        i += count
    return out


def _shortcut(x: torch.Tensor, params: tuple, dtype: torch.dtype) -> torch.Tensor:
    """The unit's shortcut: identity, or the 1×1 convolution in ``dtype`` (autocast's choice in forward)."""
    if len(params) == 3:
        return x
    weight, bias = params[3:]
    return F.conv2d(x.to(dtype), weight.to(dtype), bias.to(dtype))


class _LeanUnits(torch.autograd.Function):
    """``x -> pool?(units(upsample?(x)))``, saving the input and each unit's conv output ``y``; see the module
    docstring.

    Inputs: ``(spec, pool, up)`` (spec: per unit, parameter count and layer-norm eps; up: 2 with an
    upsampling, else 0), ``x`` (B, C, H, W), then the upsampling's weight and bias if any, then every
    unit's parameters in :func:`_unit_params` order.
    """

    @staticmethod
    def forward(ctx: Any, layout: tuple, x: torch.Tensor, *flat: torch.Tensor) -> torch.Tensor:
        spec, pool, up = layout
        size = _images_per_chunk(x, spec, flat, up)
        out, ys, up_dtype = None, [], None
        for start in range(0, len(x), size):
            xu = x[start : start + size]
            if up:
                xu = F.conv_transpose2d(xu, flat[0], flat[1], stride=2)  # autocast, if on, picks the dtype
                up_dtype = xu.dtype
            part, part_ys, dtypes = _forward_images(spec, xu, flat[up:])
            out = _into(out, F.max_pool2d(part, 2) if pool else part, start, len(x))
            ys += part_ys
        ctx.layout, ctx.dtypes, ctx.up_dtype, ctx.device_type, ctx.chunk = layout, dtypes, up_dtype, x.device.type, size
        ctx.save_for_backward(x, *ys, *flat)  # x: the caller's tensor, alive through this forward anyway
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        with torch.autocast(ctx.device_type, enabled=False):  # the recomputation repeats forward's dtypes itself
            return (None, *_backward(ctx, grad))


def _images_per_chunk(x: torch.Tensor, spec: tuple, flat: tuple, up: int) -> int:
    """Images per chunk of the batch ``x`` (see :data:`CHUNK_BYTES`): equal chunks whose largest map
    (the input, or a unit's conv output, upsampled or not) takes at most about CHUNK_BYTES; on GPUs the whole batch."""
    if x.device.type != "cpu":
        return len(x)
    channels = max(x.shape[1], *(params[0].shape[0] for params in _split(spec, flat[up:])))
    image_bytes = channels * x.shape[2] * x.shape[3] * (4 if up else 1) * x.element_size()
    chunks = max(1, math.ceil(len(x) * image_bytes / CHUNK_BYTES))
    return math.ceil(len(x) / chunks)


def _forward_images(spec: tuple, x: torch.Tensor, flat: tuple) -> tuple[torch.Tensor, list, list]:
    """The units' output for these images (before pooling), every unit's ``y`` to keep (None where
    backward recomputes it) and the dtypes (y, z, shortcut) each unit ran in.

    The ops of ResidualConvUnit's plain route (autocast, if on, picks their dtypes as it would
    there), except that each unit adds its branch straight into the padded buffer the next unit
    convolves (this function's own: never x), which saves the pad's copy and a buffer.
    """
    ys, dtypes = [], []
    padded = padded_copy(x)
    xi = padded[:, :, : x.shape[2], : x.shape[3]]  # x_i, in the padded buffer
    for i, ((_, eps), params) in enumerate(zip(spec, _split(spec, flat))):
        weight, norm_weight, norm_bias = params[:3]
        y = F.conv2d(padded, weight)  # (B, C_out, H, W)
        z = F.relu_(F.layer_norm(y.permute(0, 2, 3, 1), y.shape[1:2], norm_weight, norm_bias, eps))  # (B, H, W, C)
        z = z.permute(0, 3, 1, 2)
        s = F.conv2d(x if i == 0 else xi, *params[3:]) if len(params) > 3 else xi
        dtypes.append((y.dtype, z.dtype, s.dtype))
        ys.append(None if weight.shape[1] <= RECOMPUTED_CONV_MAX_CHANNELS else y)
        dtype = torch.result_type(z, s)  # in place below wherever that is the dtype: the same sums
        if i == len(spec) - 1:
            out = z.add_(s) if dtype == z.dtype else z + s
        elif s is xi and padded.dtype == dtype:
            xi = xi.add_(z)  # x_{i+1} = x_i + ReLU(LN(y_i)), over x_i
        else:
            padded = padded_empty(z, dtype)
            xi = torch.add(z, s, out=padded[:, :, : x.shape[2], : x.shape[3]])
    return out, ys, dtypes


def _backward(ctx: Any, grad: torch.Tensor) -> list[torch.Tensor | None]:
    """The gradients, chunk by chunk of the forward pass (see :data:`CHUNK_BYTES`)."""
    spec, _, up = ctx.layout
    n = len(spec)
    x, *rest = ctx.saved_tensors
    n_ys = n * math.ceil(len(x) / ctx.chunk)  # every chunk's ys, chunk after chunk
    ys, flat = rest[:n_ys], tuple(rest[n_ys:])
    input_grad, grads = None, [None] * len(flat)
    for c, start in enumerate(range(0, len(x), ctx.chunk)):
        part = slice(start, start + ctx.chunk)
        xu = _upsample(x[part], flat, ctx.up_dtype) if up else x[part]
        part_grad, *param_grads = _backward_images(ctx, xu, list(ys[c * n : (c + 1) * n]), flat[up:], grad[part])
        if up:  # through the upsampling, as autograd's node of conv_transpose2d would
            weight, bias, dtype = *flat[:2], ctx.up_dtype
            part_grad, gw, gb = aten.convolution_backward(
                part_grad.to(dtype), x[part].to(dtype), weight.to(dtype), [bias.shape[0]], [2, 2], [0, 0], [1, 1],
                True, [0, 0], 1, [ctx.needs_input_grad[1], *_needs(ctx, 0, 1)])
            param_grads = [_to(gw, weight), _to(gb, bias), *param_grads]
        if part_grad is not None:
            input_grad = _into(input_grad, part_grad, start, len(x))
        grads = [g if total is None else total if g is None else total.add_(g) for total, g in zip(grads, param_grads)]
    return [input_grad, *grads]


def _into(whole: torch.Tensor | None, part: torch.Tensor, start: int, total: int) -> torch.Tensor:
    """``part``, the rows of a batch of ``total`` from ``start`` on, copied into ``whole`` (made like
    ``part`` on first use): one batch-sized buffer, not every chunk's and then their concatenation.
    ``part`` itself when it is the whole batch."""
    if len(part) == total:
        return part
    if whole is None:
        whole = torch.empty((total, *part.shape[1:]), dtype=part.dtype, device=part.device,
                            memory_format=_memory_format(part))
    whole[start : start + len(part)].copy_(part)
    return whole


def _upsample(x: torch.Tensor, flat: tuple, dtype: torch.dtype) -> torch.Tensor:
    """The forward's upsampling of these images again, in the dtype autocast gave it there."""
    return F.conv_transpose2d(x.to(dtype), flat[0].to(dtype), flat[1].to(dtype), stride=2)


def _backward_images(ctx: Any, x: torch.Tensor, ys: list, flat: tuple, grad: torch.Tensor) -> list:
    """The units' input's and every unit parameter's gradient from these images' saved tensors and output
    gradient (``x`` the units' input: upsampled, if the node upsamples; ``flat`` the units' parameters)."""
    spec, pool, up = ctx.layout
    input_needed = bool(up) or ctx.needs_input_grad[1]  # the upsampling's gradients come from this one
    per_unit = _split(spec, flat)
    h, w = x.shape[2:]
    # 1. Rebuild every unit's padded input and norm output, then go back through the pooling, if any.
    padded, norms, last = _rebuild_inputs(ctx, x, ys, per_unit)
    owned = False  # whether ``grad`` is this function's own tensor, free to update in place
    if pool:
        grad, owned = _pool_backward(grad, *last), True
    del last
    # 2. Backward unit by unit, last first, through the kernels autograd's own nodes call.
    grads: list[Any] = [None] * len(flat)
    offset = len(flat)
    for i in reversed(range(len(spec))):
        params = per_unit[i]
        offset -= len(params)
        need_x = i > 0 or input_needed
        xp = padded.pop()
        gp, grads[offset : offset + 3] = _branch_backward(ctx, i, params, up + offset, norms, ys[i], xp, grad, need_x)
        xi, x_dtype = xp[:, :, :h, :w], xp.dtype
        if len(params) > 3:
            gsx, grads[offset + 3 : offset + 5] = _shortcut_backward(ctx, i, params, up + offset, xi, grad, need_x)
            owned = True
        else:
            gsx = grad
        del xp, xi, grad
        grad = None
        if need_x:  # the shortcut's gradient plus the padded conv input's, in place when it is ours
            gx = gp[:, :, :-1, :-1]
            grad = gsx.add_(gx) if owned and gsx.dtype == x_dtype else gx.to(x_dtype) + gsx.to(x_dtype)
            owned = True
        del gp, gsx
    return [grad if input_needed else None, *grads]


def _rebuild_inputs(ctx: Any, x: torch.Tensor, ys: list, per_unit: list[tuple]) -> tuple[list, list, tuple]:
    """Every unit's padded input, rebuilt by re-adding the residual branches in forward order, and its
    (ReLU(LN(y)) (B, H, W, C), mean, rstd) for ReLU's mask (a chunk's worth); the last unit's
    (ReLU(LN(y)), shortcut) too, from which the stage output is made again if pooled. Fills in the
    ``ys`` that forward did not keep."""
    (spec, pool, _), dtypes, n = ctx.layout, ctx.dtypes, len(ctx.layout[0])
    h, w = x.shape[2:]
    first = padded_copy(x)
    padded, norms = [first], []
    for i, ((_, eps), params) in enumerate(zip(spec, per_unit)):
        y_dtype, z_dtype, s_dtype = dtypes[i]
        if ys[i] is None:
            ys[i] = F.conv2d(first.to(y_dtype), params[0].to(y_dtype))
        z, mean, rstd = aten.native_layer_norm(_norm_input(ys[i], z_dtype), [ys[i].shape[1]], params[1], params[2], eps)
        norms.append((z.relu_(), mean, rstd))  # (B, H, W, C); the mask z <= 0 is the same after the ReLU
        s = _shortcut(padded[i][:, :, :h, :w], params, s_dtype) if i < n - 1 or pool else None
        if i < n - 1:
            nxt = padded_empty(z.permute(0, 3, 1, 2), torch.result_type(z, s))
            torch.add(z.permute(0, 3, 1, 2), s, out=nxt[:, :, :h, :w])
            padded.append(nxt)
            del nxt
    return padded, norms, (z, s)


def _pool_backward(grad: torch.Tensor, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The gradient through the 2×2 max pooling: the stage output again (z (B, H, W, C) + shortcut), then its indices."""
    out = z.permute(0, 3, 1, 2) + s
    indices = aten.max_pool2d_with_indices(out, *_POOL)[1]
    return aten.max_pool2d_with_indices_backward(grad, out, *_POOL, indices)


def _branch_backward(
    ctx: Any, i: int, params: tuple, at: int, norms: list, y: torch.Tensor, xp: torch.Tensor, grad: torch.Tensor,
    need_x: bool,
) -> tuple[torch.Tensor | None, list]:
    """Unit ``i``'s branch, ReLU(LN(conv(xp))), backward: the padded input's gradient (None unless ``need_x``)
    and [conv weight's, norm weight's, norm bias's]; ``at``: the conv weight's position among the node's
    parameters. Takes the unit's norm output off ``norms``, and frees it as soon as it is used."""
    y_dtype, z_dtype, _ = ctx.dtypes[i]
    z, mean, rstd = norms.pop()
    y = _norm_input(y, z_dtype)
    g = aten.threshold_backward.grad_input(grad.to(z_dtype).permute(0, 2, 3, 1), z, 0, grad_input=z)  # (B, H, W, C)
    del z
    gy, gnw, gnb = aten.native_layer_norm_backward(
        g, y, [y.shape[-1]], mean, rstd, params[1], params[2], [True, *_needs(ctx, at + 1, at + 2)])
    del g, y
    gy = gy.permute(0, 3, 1, 2).to(y_dtype)  # (B, C, H, W)
    gp, gw, _ = aten.convolution_backward(
        gy, xp.to(y_dtype), params[0].to(y_dtype), None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
        [need_x, *_needs(ctx, at), False])
    return gp, [_to(gw, params[0]), _to(gnw, params[1]), _to(gnb, params[2])]


def _shortcut_backward(
    ctx: Any, i: int, params: tuple, at: int, xi: torch.Tensor, grad: torch.Tensor, need_x: bool
) -> tuple[torch.Tensor | None, list]:
    """Unit ``i``'s 1×1 shortcut convolution backward: its input's gradient and [weight's, bias's]."""
    s_dtype = ctx.dtypes[i][2]
    gsx, gsw, gsb = aten.convolution_backward(
        grad.to(s_dtype), xi.to(s_dtype), params[3].to(s_dtype), [params[4].shape[0]], [1, 1], [0, 0],
        [1, 1], False, [0, 0], 1, [need_x, *_needs(ctx, at + 3, at + 4)])
    return gsx, [_to(gsw, params[3]), _to(gsb, params[4])]


def _norm_input(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The layer norm's input: the conv output ``y`` as (B, H, W, C), in the dtype the norm ran in."""
    return y.permute(0, 2, 3, 1).to(dtype)


def _needs(ctx: Any, *flat_indices: int) -> list[bool]:
    """Whether the parameters at these positions of ``flat`` need a gradient (apply's inputs: spec, x, *flat)."""
    return [ctx.needs_input_grad[2 + i] for i in flat_indices]


def _to(grad: torch.Tensor | None, param: torch.Tensor) -> torch.Tensor | None:
    return None if grad is None else grad.to(param.dtype)
