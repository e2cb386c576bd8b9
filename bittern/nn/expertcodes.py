"""The stacked ternary codes of a mixture-of-experts projection, kept between optimizer steps.

The grouped int8 x ternary kernel multiplies by every expert's codes at once, stacked (E, N, K)
(gate and up concatenated: N = 2 * ffn). `ExpertCodes` holds that stack and its gammas and
makes each expert BitLinear's own `ternary_codes` / `ternary_gamma` (`bittern.nn.fastpath`) a
view of its block, so the dense layers' machinery keeps them current: `CodeRefresher`
(`refresh_ternary_codes`) rewrites them in place after each optimizer step, and each forward
rewrites those whose weight was written since (`fastpath.current_codes`, the version-counter
check). Nothing is stacked or ternarized per forward while the weights stand still.

A layer whose codes are no longer the views (the refresher or a device move made its own, a
lambda below 1 dropped them) is bound again on the next call, the stack made anew where its
shape or device changed. Plain attributes, as the layers' codes are: no state-dict entries,
no DDP broadcast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bittern.nn import fastpath


class ExpertCodes:
    """Codes (E, P * n, K) int8 and gammas of P projections (parts) of E expert BitLinears, bound to them."""

    def __init__(self) -> None:
        self.codes: torch.Tensor | None = None  # (E, P * n, K) int8: expert e's part p in rows p*n..(p+1)*n
        self.gamma: torch.Tensor | None = None  # (E, P * n) per channel, (E, P) per tensor; float32
        self._views: list[list[torch.Tensor]] = []  # [p][e]: the codes view given to layer parts[p][e]

    def current(self, parts: Sequence[Sequence[nn.Module]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes (E, P * n, K), gamma (E, P * n)) of the layers' weights as they are now.

        parts[p][e]: the BitLinear of part p of expert e, all of one shape and one granularity.
        """
        if not self._bound(parts):
            self._bind(parts)
        transposed = parts[0][0].kernel_options.grad_input_int8  # as the refresher keeps them
        for layers in parts:
            for layer in layers:
                fastpath.current_codes(layer, transposed)  # rewrites only what was written since
        if self.gamma.shape[1] == self.codes.shape[1]:
            return self.codes, self.gamma
        n = self.codes.shape[1] // self.gamma.shape[1]
        return self.codes, self.gamma.repeat_interleave(n, dim=1)  # per tensor: one per row

    def _bound(self, parts: Sequence[Sequence[nn.Module]]) -> bool:
        views = self._views
        if len(views) != len(parts):
            return False
        for layers, mine in zip(parts, views, strict=True):
            if len(layers) != len(mine):
                return False
            for layer, view in zip(layers, mine, strict=True):
                if layer.ternary_codes is not view:
                    return False
        return True

    def _bind(self, parts: Sequence[Sequence[nn.Module]]) -> None:
        first = parts[0][0]
        w = first.weight
        n, k = w.shape
        n_parts, n_experts = len(parts), len(parts[0])
        per_channel = first.options.granularity == "channel"
        shape = (n_experts, n_parts * n, k)
        if self.codes is None or self.codes.shape != shape or self.codes.device != w.device:
            self.codes = torch.empty(shape, dtype=torch.int8, device=w.device)
        gamma_shape = (n_experts, n_parts * n if per_channel else n_parts)
        if self.gamma is None or self.gamma.shape != gamma_shape or self.gamma.device != w.device:
            self.gamma = torch.empty(gamma_shape, dtype=torch.float32, device=w.device)
        self._views = []
        for p, layers in enumerate(parts):
            mine = []
            for e, layer in enumerate(layers):
                assert layer.weight.shape == (n, k), "the experts' projections share one shape"
                codes = self.codes[e, p * n : (p + 1) * n]
                gamma = self.gamma[e, p * n : (p + 1) * n] if per_channel else self.gamma[e, p : p + 1]
                layer.ternary_codes, layer.ternary_gamma = codes, gamma
                layer.ternary_codes_t = None
                layer.ternary_source = None  # not made yet: the next check rewrites them
                mine.append(codes)
            self._views.append(mine)
