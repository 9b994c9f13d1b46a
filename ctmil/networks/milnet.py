"""The bag network: LeNet instance encoder + gated attention MIL pooling + fc-1 classifier + SSL location heads."""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn

from ctmil.networks.density import DensityBranch
from ctmil.networks.encoder import LeNetEncoder
from ctmil.networks.fusion import DensityFusion
from ctmil.networks.heads import MLPHead
from ctmil.networks.pooling import GatedAttentionPool
from ctmil.networks.utils import check_positive_int, he_init_, raise_if

__all__ = ["DENSITY_USES", "MILNet"]

#: what a network's lung-density features feed (``MILNet(density_use=...)``)
DENSITY_USES = ("branch", "fusion")


class MILNet(nn.Module):
    """Attention-MIL bag classifier with self-supervised location heads (paper Sec. III.B, III.D, Table II).

    Pipeline for a padded batch ``x: (B, K, C, P, P)`` (or ``(B, K, P, P)`` when ``in_channels == 1``; this is
    the "instances as channels" layout MONAI's ``verify_net_in_out`` feeds) with ``mask: (B, K)``:

    1. every *real* instance is encoded once (instances are packed by ``mask``; padded ones never reach the
       encoder and get zero features): ``features (B, K, M)``;
    2. gated (or plain) attention pooling: ``attention (B, K)``, ``bag_features (B, M)``;
    3. ``fc-1`` on the (dropout-ed) bag features: ``logits (B, 1)`` (apply sigmoid, threshold 0.5, outside);
    4. SSL heads in ``self.ssl_heads`` (two fc layers each): ``"absolute"`` maps an instance feature to
       ``n_positions`` grid positions, ``"relative"`` maps the concatenated features of a pair to
       ``n_directions`` directions (see :mod:`ctmil.networks.pairs`).

    :meth:`forward` returns only the logits; :meth:`forward_all` returns every output in a dict;
    :meth:`attention` returns only the attention weights. No state is stashed on ``self``.

    Args:
        in_channels: channels per patch (1 for CT).
        patch_size: patch side ``P`` (60 in the paper); used by the default encoder.
        feature_dim: instance feature size ``M`` (512); must equal a custom ``encoder``'s output size.
        attention_dim: attention hidden size ``L`` (128).
        gated: gated attention (``True``) or the paper's plain tanh attention (``False``).
        n_positions: classes of the absolute-location head (12 = 4 × 3 grid).
        n_directions: classes of the relative-location head (8).
        ssl_hidden: hidden width of both SSL heads.
        encoder: any ``nn.Module`` mapping ``(N, C, H, W) -> (N, feature_dim)``; ``None`` builds the paper's
            :class:`~ctmil.networks.encoder.LeNetEncoder`. A custom encoder keeps its own initialisation.
        dropout: dropout on the bag features before the classifier and on the SSL heads' hidden layer.
        n_density: 0 (the paper's network) or the number of lung-density features of a bag
            (:data:`ctmil.transforms.DENSITY_FEATURES`): a :class:`~ctmil.networks.density.DensityBranch` maps them
            to ``density_hidden`` values that the classifier sees beside the pooled bag features (the hybrid);
            ``forward``/``forward_all`` then need ``density (B, n_density)``.
        density_hidden: width of that branch.
        density_gain: the branch's output gain, i.e. how much faster than the rest it learns under Adam
            (:mod:`ctmil.networks.density`).
        density_use: what the ``n_density`` features feed: ``"branch"`` (the hybrid above) or ``"fusion"``: a
            :class:`~ctmil.networks.fusion.DensityFusion` that averages the classifier's logit with a linear density
            model's, each calibrated (the default of ``train.json``). It passes the MIL logit through until
            :class:`~ctmil.train.handlers.DensityFusionHandler` fits it when training ends; ``self.fusion``.

        attention_channels: ``None`` (the attention scores come from the instance features) or ``c < in_channels``: a
            second encoder (the same LeNet) on the first ``c`` channels of each patch gives the features the
            attention scores are computed from (``self.attention_encoder``), while the bag features stay the sum of
            the full encoder's features. With the two-channel input (per-patch min-max, then the volume-wide window)
            and ``c = 1``, attention can only look at what the min-max patch shows.

    All layers built here are He-initialised with zero biases (paper Sec. IV.D).
    """

    def __init__(
        self,
        in_channels: int = 1,
        patch_size: int = 60,
        feature_dim: int = 512,
        attention_dim: int = 128,
        gated: bool = True,
        n_positions: int = 12,
        n_directions: int = 8,
        ssl_hidden: int = 256,
        encoder: Optional[nn.Module] = None,
        dropout: float = 0.0,
        n_density: int = 0,
        density_hidden: int = 32,
        density_gain: float = 1.0,
        density_use: str = "branch",
        attention_channels: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.patch_size = check_positive_int("patch_size", patch_size)
        self.feature_dim = check_positive_int("feature_dim", feature_dim)
        check_positive_int("attention_dim", attention_dim)
        self.n_positions = check_positive_int("n_positions", n_positions, minimum=2)
        self.n_directions = check_positive_int("n_directions", n_directions, minimum=2)
        check_positive_int("ssl_hidden", ssl_hidden)
        if not isinstance(gated, bool):
            raise ValueError(f"gated must be a bool, got {gated!r}.")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}.")
        if encoder is not None and not isinstance(encoder, nn.Module):
            raise ValueError(f"encoder must be an nn.Module or None, got {type(encoder).__name__}.")

        # constructor arguments, so a trained model can be rebuilt (a custom encoder is not recorded)
        self.hparams = {"in_channels": in_channels, "patch_size": patch_size, "feature_dim": feature_dim,
                        "attention_dim": attention_dim, "gated": gated, "n_positions": n_positions,
                        "n_directions": n_directions, "ssl_hidden": ssl_hidden, "dropout": float(dropout)}
        if isinstance(n_density, bool) or not isinstance(n_density, int) or n_density < 0:
            raise ValueError(f"n_density must be an int >= 0, got {n_density!r}.")
        if density_use not in DENSITY_USES:
            raise ValueError(f"density_use must be one of {DENSITY_USES}, got {density_use!r}.")
        self.n_density = n_density
        branch = bool(n_density) and density_use == "branch"
        if branch:  # recorded only when used, so a paper network's record stays as it was
            self.hparams.update(n_density=n_density, density_hidden=density_hidden, density_gain=float(density_gain))
        elif n_density:
            self.hparams.update(n_density=n_density, density_use=density_use)
        self.encoder = LeNetEncoder(in_channels, patch_size, feature_dim) if encoder is None else encoder
        if attention_channels is not None:
            if isinstance(attention_channels, bool) or not isinstance(attention_channels, int) or not 0 < attention_channels < in_channels:
                raise ValueError(f"attention_channels must be None or an int in [1, in_channels), got {attention_channels!r}.")
            self.hparams.update(attention_channels=attention_channels)
        self.attention_channels = int(attention_channels or 0)  # 0: attention scored on the instance features
        self.attention_encoder = None if attention_channels is None else LeNetEncoder(attention_channels, patch_size, feature_dim)
        self.pool = GatedAttentionPool(feature_dim, attention_dim, gated=gated)
        self.dropout = nn.Dropout(float(dropout))
        self.density = DensityBranch(n_density, density_hidden, density_gain) if branch else None
        self.fusion = DensityFusion(n_density) if n_density and not branch else None
        self.classifier = nn.Linear(feature_dim + (density_hidden if branch else 0), 1)
        self.ssl_heads = nn.ModuleDict(
            {
                "absolute": MLPHead(feature_dim, ssl_hidden, n_positions, dropout=float(dropout)),
                "relative": MLPHead(2 * feature_dim, ssl_hidden, n_directions, dropout=float(dropout)),
            }
        )
        for module in (self.pool, self.classifier, self.ssl_heads):
            he_init_(module)
        if branch:  # an untrained hybrid predicts as the MIL network does
            with torch.no_grad():
                self.classifier.weight[:, feature_dim:] = 0.0

    def _instances(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, K, P, P)`` or ``(B, K, C, P, P)`` -> ``(B, K, C, P, P)``, validated."""
        if x.dim() == 4:
            if self.in_channels != 1:
                raise ValueError("x of shape (B, K, H, W) is only accepted when in_channels == 1.")
            x = x.unsqueeze(2)
        elif x.dim() != 5:
            raise ValueError("x must be (B, K, C, H, W) or (B, K, H, W); a single bag needs a leading batch axis.")
        if x.shape[2] != self.in_channels:
            raise ValueError(f"the patches have {x.shape[2]} channel(s) (dim 2 of (B, K, C, H, W)), the network takes "
                             f"in_channels={self.in_channels}: bags made with other preprocessing than the model's")
        if x.shape[1] == 0:
            raise ValueError("cannot run on empty bags (K = 0).")
        return x

    def _check_mask(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if mask is None:
            return None
        if mask.dim() != 2 or mask.shape[0] != x.shape[0] or mask.shape[1] != x.shape[1]:
            raise ValueError("mask must be (B, K), matching x's first two axes.")
        mask = mask.to(torch.bool)
        raise_if(~mask.any(dim=1).all(), "every bag needs at least one real instance; got a fully masked-out bag.")
        return mask

    @torch.jit.export
    def encode(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Instance features ``(B, K, M)``; zero rows on padded instances, which are never encoded."""
        x = self._instances(x)
        return self._encode(x, self._check_mask(x, mask))

    def _score_features(self, x: torch.Tensor, mask: Optional[torch.Tensor], feats: torch.Tensor,
                        chunk_size: Optional[int] = None) -> Optional[torch.Tensor]:  # fmt: skip
        """The features attention is scored on: ``None`` (= ``feats``) unless ``attention_channels`` is set."""
        if self.attention_encoder is None:
            return None
        return self._encode(x[:, :, : self.attention_channels], mask, chunk_size, True)

    def _apply_encoder(self, flat: torch.Tensor, attention: bool) -> torch.Tensor:
        if attention:
            if self.attention_encoder is not None:
                return self.attention_encoder(flat)
        return self.encoder(flat)

    def _encode(self, x: torch.Tensor, mask: Optional[torch.Tensor], chunk_size: Optional[int] = None,
                attention: bool = False) -> torch.Tensor:  # fmt: skip
        """``x: (B, K, C, P, P)`` validated, ``mask: (B, K)`` bool or None -> ``(B, K, M)``.

        ``chunk_size`` encodes the instances in equal chunks of at most that many (same result; bounds the
        activation memory of large bags at inference, ~0.6 MB per 60×60 patch)."""
        b, k = x.shape[0], x.shape[1]
        flat = x.flatten(0, 1)  # (B*K, C, P, P)
        idx = torch.empty(0, dtype=torch.long, device=x.device)
        if mask is not None:
            idx = torch.nonzero(mask.reshape(-1)).squeeze(1)  # (R,) real instances
            flat = flat.index_select(0, idx)  # (R, C, P, P): padded instances never reach the encoder
        if chunk_size is None or flat.shape[0] <= chunk_size:
            feats = self._apply_encoder(flat, attention)  # (R, M)
        else:
            n_chunks = (flat.shape[0] + chunk_size - 1) // chunk_size
            step = (flat.shape[0] + n_chunks - 1) // n_chunks  # equal chunks of at most chunk_size
            feats = torch.cat([self._apply_encoder(c, attention) for c in flat.split(step)])  # (R, M)
        if feats.dim() != 2 or feats.shape[1] != self.feature_dim:
            raise ValueError("the encoder must map (N, C, H, W) to (N, feature_dim).")
        if mask is not None:
            feats = feats.new_zeros((b * k, self.feature_dim)).index_copy(0, idx, feats)  # (B*K, M), zero padding
        return feats.reshape(b, k, self.feature_dim)

    def _classify(self, z: torch.Tensor, density: Optional[torch.Tensor]) -> torch.Tensor:
        """Logits ``(B, 1)`` of pooled features ``z (B, M)`` (and, for the hybrid or the fusion, the bags' density
        features)."""
        z = self.dropout(z)
        if self.density is not None:
            if density is None:
                raise ValueError(self._needs_density())
            if density.shape[0] != z.shape[0]:
                raise ValueError("density must have one row per bag.")
            z = torch.cat([z, self.density(density)], dim=1)
        logits = self.classifier(z)
        if self.fusion is not None:
            if density is None:  # an unfitted fusion passes the MIL logit through: nothing is missing
                if self.fusion.is_fitted():
                    raise ValueError(self._needs_density())
            else:
                if density.shape[0] != z.shape[0]:
                    raise ValueError("density must have one row per bag.")
                logits = self.fusion(logits, density)
        return logits

    def _needs_density(self) -> str:
        return (f"this network uses the bags' lung-density features (n_density={self.n_density}): pass density (B, "
                f"{self.n_density}); bags made before ctmil recorded them must be preprocessed again.")

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, density: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Bag logits ``(B, 1)`` for ``x: (B, K, C, P, P)`` or ``(B, K, P, P)``, ``mask: (B, K)`` bool or None;
        ``density (B, n_density)`` for a hybrid network (ignored otherwise)."""
        x = self._instances(x)
        mask = self._check_mask(x, mask)
        feats = self._encode(x, mask)
        z, _ = self.pool(feats, mask, self._score_features(x, mask, feats))  # (B, M)
        return self._classify(z, density)  # (B, 1)

    @torch.jit.export
    def attention(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attention weights ``(B, K)`` (zero on padded instances, each row sums to 1)."""
        x = self._instances(x)
        mask = self._check_mask(x, mask)
        feats = self._encode(x, mask)
        _, a = self.pool(feats, mask, self._score_features(x, mask, feats))
        return a

    @torch.jit.export
    def forward_all(
        self,
        x: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        pairs: Optional[torch.Tensor] = None,
        chunk_size: Optional[int] = None,
        density: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """Every output of the network.

        Args:
            x: ``(B, K, C, P, P)`` or ``(B, K, P, P)``.
            mask: ``(B, K)`` bool, True = real instance; None = all real.
            pairs: optional ``(B, P, 2)`` int64 ``(anchor, partner)`` indices into the K axis, ``-1`` rows
                are padding (see :func:`ctmil.networks.pairs_for_batch`).
            chunk_size: encode at most this many instances at once (None: all at once).
            density: ``(B, n_density)`` lung-density features, for a hybrid network (ignored otherwise).

        Returns:
            dict with ``logits (B, 1)``, ``attention (B, K)``, ``features (B, K, M)``, ``bag_features (B, M)``,
            ``ssl_abs (B, K, n_positions)`` (zero on padded instances) and, when ``pairs`` is given,
            ``ssl_rel (B, P, n_directions)`` (zero on padded pairs).
        """
        x = self._instances(x)
        mask = self._check_mask(x, mask)
        feats = self._encode(x, mask, chunk_size)  # (B, K, M)
        z, a = self.pool(feats, mask, self._score_features(x, mask, feats, chunk_size))  # (B, M), (B, K)
        ssl_abs = self.ssl_heads["absolute"](feats)  # (B, K, n_positions)
        if mask is not None:
            ssl_abs = ssl_abs.masked_fill(~mask.unsqueeze(-1), 0.0)
        out: Dict[str, torch.Tensor] = {
            "logits": self._classify(z, density),
            "attention": a,
            "features": feats,
            "bag_features": z,
            "ssl_abs": ssl_abs,
        }
        if pairs is not None:
            out["ssl_rel"] = self.relative_logits(feats, pairs)
        return out

    @torch.jit.export
    def relative_logits(self, features: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """Relative-location logits ``(B, P, n_directions)`` from ``features (B, K, M)`` and ``pairs (B, P, 2)``."""
        b, k, m = features.shape[0], features.shape[1], features.shape[2]
        if pairs.dim() != 3 or pairs.shape[0] != b or pairs.shape[2] != 2:
            raise ValueError("pairs must be (B, P, 2) with the batch size of x.")
        if pairs.is_floating_point():
            raise ValueError("pairs must be an integer tensor.")
        pairs = pairs.long()
        if pairs.numel() > 0:
            raise_if(pairs.max() >= k, "pairs index past the bag's K axis.")
        valid = (pairs >= 0).all(dim=-1)  # (B, P)
        idx = pairs.clamp(min=0).reshape(b, -1, 1).expand(-1, -1, m)  # (B, 2P, M)
        pair_feats = torch.gather(features, 1, idx).reshape(b, pairs.shape[1], 2 * m)  # (B, P, 2M): anchor ‖ partner
        logits = self.ssl_heads["relative"](pair_feats)  # (B, P, n_directions)
        return logits.masked_fill(~valid.unsqueeze(-1), 0.0)
