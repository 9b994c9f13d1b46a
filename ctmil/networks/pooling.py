"""Attention-based MIL pooling (Ilse et al. 2018), plain and gated, for single bags and padded batches."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from ctmil.networks.utils import check_positive_int, raise_if

__all__ = ["GatedAttentionPool"]


class GatedAttentionPool(nn.Module):
    """Attention MIL pooling ``z = sum_k a_k h_k``.

    Gated (``gated=True``)::

        a_k = softmax_k( w^T ( tanh(V h_k) ⊙ sigm(U h_k) ) )

    Plain (``gated=False``, the paper's Eq. 2)::

        a_k = softmax_k( w^T tanh(V h_k) )

    ``V, U`` are ``Linear(in_dim, attention_dim)`` with bias; ``w`` is ``Linear(attention_dim, 1)`` **without**
    bias (a bias before a softmax only shifts every score and would never get a gradient).

    Works on one bag ``h: (K, M)`` or on a padded batch ``h: (B, K, M)`` with ``mask: (B, K)`` bool
    (True = real instance). Padded instances get exactly zero attention and their features are never read
    (they are zeroed before the weighted sum, so NaN/inf padding cannot leak). A bag with no real instance
    raises ``ValueError`` (there is no meaningful softmax over an empty set).

    Args:
        in_dim: instance feature size ``M``.
        attention_dim: hidden size ``L`` of the attention network (128 in the paper).
        gated: use the gated variant (``sigm(U h)`` gate).
    """

    def __init__(self, in_dim: int, attention_dim: int = 128, gated: bool = True) -> None:
        super().__init__()
        check_positive_int("in_dim", in_dim)
        check_positive_int("attention_dim", attention_dim)
        if not isinstance(gated, bool):
            raise ValueError(f"gated must be a bool, got {gated!r}.")
        self.in_dim = in_dim
        self.attention_dim = attention_dim
        self.gated = gated
        self.v = nn.Linear(in_dim, attention_dim)
        # nn.Identity keeps the plain variant scriptable; it is never called when gated=False.
        self.u = nn.Linear(in_dim, attention_dim) if gated else nn.Identity()
        self.w = nn.Linear(attention_dim, 1, bias=False)

    def scores(self, h: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Unnormalised attention scores ``(B, K)``; ``-inf`` where ``mask`` is False. ``h: (B, K, M)``."""
        e = torch.tanh(self.v(h))  # (B, K, L)
        if self.gated:
            e = e * torch.sigmoid(self.u(h))
        s = self.w(e).squeeze(-1)  # (B, K)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        return s

    def forward(self, h: torch.Tensor, mask: Optional[torch.Tensor] = None,
                g: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Pool instance features into bag features.

        Args:
            h: ``(K, M)`` one bag, or ``(B, K, M)`` a padded batch.
            mask: ``(B, K)`` (or ``(K,)`` for one bag) bool, True = real instance; ``None`` = all real.
            g: features the attention scores are computed from, the shape of ``h`` (``None``: ``h`` itself); the
                bag features are always the attention-weighted sum of ``h``.

        Returns:
            ``(z, a)``: bag features ``(B, M)`` / ``(M,)`` and attention ``(B, K)`` / ``(K,)``
            (non-negative, zero on padded instances, sums to 1 per bag).
        """
        single = h.dim() == 2
        if g is None:
            g = h
        if g.shape != h.shape:
            raise ValueError(f"g must have h's shape {list(h.shape)}, got {list(g.shape)}.")
        if single:
            h, g = h.unsqueeze(0), g.unsqueeze(0)
            if mask is not None:
                mask = mask.unsqueeze(0)
        if h.dim() != 3:
            raise ValueError(f"h must be (K, M) or (B, K, M), got shape {list(h.shape)}.")
        if h.shape[1] == 0:
            raise ValueError("cannot pool an empty bag (K = 0).")
        if mask is not None:
            mask = mask.to(torch.bool)
            if mask.shape != h.shape[:2]:
                raise ValueError(f"mask shape {list(mask.shape)} does not match h's (B, K) = {list(h.shape[:2])}.")
            raise_if(~mask.any(dim=1).all(), "every bag needs at least one real instance; got a fully masked-out bag.")
            h = h.masked_fill(~mask.unsqueeze(-1), 0.0)  # padding cannot leak, even if non-finite
            g = g.masked_fill(~mask.unsqueeze(-1), 0.0)
        a = torch.softmax(self.scores(g, mask), dim=1)  # (B, K); exp(-inf) = 0 exactly on padding
        z = torch.bmm(a.unsqueeze(1), h).squeeze(1)  # (B, M)
        if single:
            return z.squeeze(0), a.squeeze(0)
        return z, a
