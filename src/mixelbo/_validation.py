"""Argument checks shared by the functional API: shapes, dtypes and option values.

Every check looks at metadata only (shape, dtype, Python values), never at tensor contents,
so none of them forces a host-device synchronisation and all of them trace under
``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from einops import rearrange
from torch import Tensor

FLOATING_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
# the dtypes reductions run in, which :func:`as_samples` returns unchanged
ACCUMULATION_DTYPES = (torch.float64, torch.float32)


def check_option(name: str, value: object, allowed: Collection[object]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {options}; got {value!r}")


def check_floating(name: str, tensor: object) -> None:
    """Raise ``ValueError`` unless ``tensor`` is a tensor of a supported floating dtype."""
    if not isinstance(tensor, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}")
    if tensor.dtype not in FLOATING_DTYPES:
        raise ValueError(
            f"{name} must be float64, float32, bfloat16 or float16; got {tensor.dtype} "
            f"with shape {tuple(tensor.shape)}"
        )


def check_same_shape(name: str, tensor: Tensor, ref_name: str, ref: Tensor) -> None:
    """Raise ``ValueError`` unless ``tensor`` has the shape of ``ref``."""
    if tensor.shape != ref.shape:
        raise ValueError(
            f"{name} must have the shape of {ref_name} {tuple(ref.shape)}; "
            f"got {tuple(tensor.shape)}"
        )


def accumulation_dtype(tensor: Tensor) -> torch.dtype:
    """The dtype reductions run in: float64 stays float64, everything else uses float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def as_samples(name: str, tensor: Tensor, pattern: str | None, upcast: bool = True) -> Tensor:
    """View a latent tensor as a ``(samples, dims)`` matrix in the accumulation dtype (in its
    own dtype with ``upcast=False``, for kernels that accumulate in float32 themselves).

    Without ``pattern`` the first axis is the batch and all others are latent dimensions
    (``(b, ...) -> (b, prod(...))``); with ``pattern`` the einops expression decides, e.g.
    ``"b c h w -> (b h w) c"`` makes every spatial position a sample. A matrix already in the
    accumulation dtype is returned as it is (no view, no copy).
    """
    check_floating(name, tensor)
    if pattern is None:
        if tensor.ndim != 2:
            if tensor.ndim < 2:
                raise ValueError(
                    f"{name} must have shape (batch, *latent_dims) with at least one latent "
                    f"axis; got shape {tuple(tensor.shape)} (pass pattern= for other layouts)"
                )
            tensor = tensor.flatten(1)
    else:
        try:
            tensor = rearrange(tensor, pattern)
        except Exception as error:  # einops raises its own EinopsError
            raise ValueError(
                f"pattern {pattern!r} does not apply to {name} of shape "
                f"{tuple(tensor.shape)}: {error}"
            ) from None
        if tensor.ndim != 2:
            raise ValueError(
                f"pattern must map {name} to (samples, dims); {pattern!r} gives shape "
                f"{tuple(tensor.shape)}"
            )
    if not upcast or tensor.dtype in ACCUMULATION_DTYPES:
        return tensor
    return tensor.float()


def check_min_samples(name: str, matrix: Tensor, minimum: int = 2) -> None:
    """Raise ``ValueError`` if ``matrix`` (samples, dims) has fewer than ``minimum`` rows."""
    if matrix.shape[0] < minimum:
        raise ValueError(
            f"{name} needs at least {minimum} samples to estimate the aggregate posterior's "
            f"moments; got {matrix.shape[0]} (samples x dims = {tuple(matrix.shape)})"
        )
