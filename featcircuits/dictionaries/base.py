"""The one interface every basis shares: SAEs, PCA, ICA, neurons, random rotations.

A dictionary maps an activation ``x [..., d_model]`` to feature activations
``c [..., n_features]`` (``encode``) and back (``decode``). Decoding is always affine::

    decode(c) = c @ directions + decoder_bias      # directions: [n_features, d_model]

so a feature's contribution to the reconstruction is ``c_i * directions[i]``, which is what
feature patching edits. The one exception is an SAE that normalises each input
(``NormalizedSparseAutoencoder``): ``decode(c, x) = s(x)·(c @ directions + decoder_bias)
(+ shift)``, with ``decoder_scale(x)`` giving ``s(x)`` (``None`` for everything else). ``error(x) = x - decode(encode(x))`` is what the dictionary misses.

``Dictionary`` is an abstract base class: a subclass must implement ``encode``,
``directions`` and ``decoder_bias``; ``Dictionary()`` itself raises ``TypeError``. Everything
else (``decode``, ``n_features``, ``d_model``, ``input_site``, ``feature_label``,
``architecture``) has a default that follows from those three.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from featcircuits.errors import FeatureIdError, NonFiniteError


class Dictionary(nn.Module, ABC):
    """Abstract base: subclasses implement ``encode``, ``directions`` and ``decoder_bias``.

    Attributes:
        site: the site name this dictionary was trained on (``"resid_out.3"``) or ``None``;
            for a dictionary that reads one site and writes another (a transcoder), the site
            it writes.
        meta: free-form metadata saved with the dictionary (training stats, source).
    """

    kind: ClassVar[str] = "dictionary"

    def __init__(self, *, site: str | None = None, meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.site = None if site is None else str(site)
        self.meta: dict[str, Any] = dict(meta or {})

    # -------------------------------------------------------------- interface
    @abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., d_model]`` → feature activations ``[..., n_features]``."""

    def encode_features(self, x: torch.Tensor, feature_ids: torch.Tensor | None = None
                        ) -> torch.Tensor:
        """``encode(x)[..., feature_ids]``, ``[..., len(feature_ids)]`` (all when ``None``).

        Dictionaries whose features are computed independently of each other (linear
        bases, ReLU and JumpReLU SAEs) compute only the requested columns, so memory and
        time scale with ``len(feature_ids)``, not ``n_features``; ``separable`` says so.
        """
        features = self.encode(x)
        return features if feature_ids is None else features[..., feature_ids]

    @property
    def separable(self) -> bool:
        """Whether ``encode_features`` computes only the requested features."""
        return False

    @property
    def separable_rows(self) -> bool:
        """Whether ``encode_rows`` computes one feature per row (never ``[R, ...,
        n_features]``)."""
        return False

    def encode_rows(self, x: torch.Tensor, feature_ids: torch.Tensor) -> torch.Tensor:
        """Each row's own feature: ``x [R, ..., d_model]``, ``feature_ids [R]`` → ``[R, ...]``
        with row ``r`` holding ``encode(x[r])[..., feature_ids[r]]``.

        Dictionaries whose features are computed independently of each other (ReLU,
        JumpReLU, centred and gated SAEs, transcoders, linear bases) compute one encoder
        row per row of ``x``; others (TopK, tokens) encode every feature (``[R, ...,
        n_features]``) and pick. Differentiable in ``x`` either way.
        """
        features = self.encode(x)
        index = feature_ids.to(features.device).long().reshape(
            -1, *([1] * (features.ndim - 1))).expand(*features.shape[:-1], 1)
        return torch.gather(features, -1, index).squeeze(-1)

    @property
    @abstractmethod
    def directions(self) -> torch.Tensor:
        """Decoder directions ``[n_features, d_model]`` (row i is feature i's f_i)."""

    @property
    @abstractmethod
    def decoder_bias(self) -> torch.Tensor:
        """Decoder bias ``[d_model]``."""

    def decode(self, features: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Feature activations ``[..., n_features]`` → reconstruction ``[..., d_model]``.

        ``x [..., d_model]``, the input the features were encoded from, is needed only by a
        dictionary with a ``decoder_scale`` (which refuses ``x=None``); others ignore it.
        """
        return features @ self.directions + self.decoder_bias

    def decoder_scale(self, x: torch.Tensor) -> torch.Tensor | None:
        """``s(x) [..., 1]`` when feature i writes ``s(x)·directions[i]`` at input
        ``x [..., d_model]`` (an SAE that normalises each input,
        ``NormalizedSparseAutoencoder``); ``None`` (a scale of 1) for an affine decoder."""
        return None

    def error(self, x: torch.Tensor) -> torch.Tensor:
        """What the dictionary misses: ``x - decode(encode(x), x)``, ``[..., d_model]``."""
        return x - self.decode(self.encode(x), x)

    def forward(self, x: torch.Tensor, output_features: bool = False):
        """Reconstruct ``x``; with ``output_features=True`` return ``(x_hat, features)``."""
        features = self.encode(x)
        reconstruction = self.decode(features, x)
        return (reconstruction, features) if output_features else reconstruction

    # ------------------------------------------------------------------ shape
    @property
    def d_model(self) -> int:
        """Width of the activations it reads and writes (``directions.shape[1]``)."""
        return int(self.directions.shape[1])

    @property
    def n_features(self) -> int:
        """Number of features (``directions.shape[0]``)."""
        return int(self.directions.shape[0])

    # ------------------------------------------------------- sites, labels, files
    @property
    def input_site(self) -> str | None:
        """The site ``encode`` reads: ``site`` (transcoders override it with their input).

        Callers compare it with ``site``: a dictionary reads where it writes unless
        ``input_site`` differs from ``site``.
        """
        return self.site

    @property
    def later_writes(self) -> dict[str, torch.Tensor]:
        """``{site: directions [n_features, d_model]}`` of the sites after ``site`` that its
        features also write (a cross-layer transcoder's later layers); ``{}`` by default.

        Patching a feature edits ``site`` and each of these (``engine.edits.patch_site``'s
        ``carry``).
        """
        return {}

    def feature_label(self, feature: int) -> str:
        """Human label of ``feature`` shown beside its node in circuit graphs.

        ``""`` by default: features have no names, and renderers show the id (``#117``). A
        token basis returns the token's string.
        """
        return ""

    @property
    def architecture(self) -> str | None:
        """Its file format: a key of ``featcircuits.dictionaries.registry.FORMATS`` that
        ``save_dictionary`` writes it with, or ``None`` when it cannot be saved."""
        return None

    def config(self) -> dict[str, Any]:
        """Constructor arguments other than tensors (saved in ``cfg.json``)."""
        return {}

    def __repr__(self) -> str:
        site = f", site={self.site!r}" if self.site else ""
        return f"{type(self).__name__}(d_model={self.d_model}, n_features={self.n_features}{site})"

    # ----------------------------------------------------------------- checks
    def check_feature_ids(self, feature_ids, *, allow_duplicates: bool = False) -> torch.Tensor:
        """Validate feature ids and return them as a ``long`` tensor.

        Raises ``FeatureIdError`` naming the first id that is out of range or repeated.
        """
        ids = torch.as_tensor(feature_ids)
        if ids.numel() and (ids.dtype.is_floating_point or ids.dtype == torch.bool):
            raise FeatureIdError(
                f"feature ids must be integers, got dtype {ids.dtype}",
                hint="pass a list of ints or a long tensor",
            )
        ids = ids.long().reshape(-1)
        bad = ids[(ids < 0) | (ids >= self.n_features)]
        if bad.numel():
            raise FeatureIdError(
                f"feature id {int(bad[0])} is out of range for {self!r}",
                hint=f"ids must lie in 0..{self.n_features - 1}",
            )
        if not allow_duplicates and ids.numel() != torch.unique(ids).numel():
            values, counts = torch.unique(ids, return_counts=True)
            raise FeatureIdError(
                f"feature id {int(values[counts > 1][0])} is listed more than once",
                hint="pass each feature once",
            )
        return ids

    def check_finite(self) -> None:
        """Raise ``NonFiniteError`` if any weight is NaN or infinite."""
        for name, tensor in self.state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise NonFiniteError(
                    f"dictionary {self!r} has NaN/inf values in {name!r}",
                    hint="retrain or reload the dictionary; the file may be corrupt",
                )
