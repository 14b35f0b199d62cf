"""The base of the ex-post samplers: fitted statistics as buffers that ``state_dict`` saves."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class FittedSampler(nn.Module):
    """An ``nn.Module`` whose ``fit`` fills the buffers named in ``FITTED`` (empty before).

    ``load_state_dict`` resizes those buffers to the saved shapes (and dtypes), so a fresh,
    unfitted sampler loads a fitted one's state. Calling the module samples:
    ``sampler(n)`` is ``sampler.sample(n)``.
    """

    FITTED: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        for name in self.FITTED:
            self.register_buffer(name, torch.empty(0))

    @property
    def fitted(self) -> bool:
        """Whether the sampler was fitted (or loaded from a fitted one's ``state_dict``)."""
        return self._buffers[self.FITTED[0]] is not None and bool(
            self._buffers[self.FITTED[0]].numel()  # type: ignore[union-attr]
        )

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(
                f"this {type(self).__name__} is not fitted yet: call .fit(codes) first (or "
                "load_state_dict from a fitted one)"
            )

    def _set_fitted(self, **values: Tensor) -> None:
        for name, value in values.items():
            self._buffers[name] = value

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def forward(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.sample(n, generator=generator)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        for name in self.FITTED:
            saved = state_dict.get(prefix + name)
            current = self._buffers[name]
            if isinstance(saved, Tensor) and current is not None:
                self._buffers[name] = torch.empty(
                    saved.shape, dtype=saved.dtype, device=current.device
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
