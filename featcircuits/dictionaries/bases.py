"""Linear bases behind the dictionary interface: neurons, PCA, ICA, random rotations.

All are ``c = (x - mean) @ encoder.T`` and ``x̂ = c @ directions + mean`` with fixed
matrices; only how the matrices are chosen differs. With a full-rank square basis the
reconstruction is exact and the error is zero (up to float precision).
"""

from __future__ import annotations

from typing import Any

import torch

from featcircuits.dictionaries.base import Dictionary
from featcircuits.errors import NonFiniteError, ParameterError, WidthMismatchError
from featcircuits.seeds import check_seed


class LinearBasis(Dictionary):
    """A fixed linear basis.

    Args:
        encoder: ``[n_features, d_model]``; row i reads feature i.
        directions: ``[n_features, d_model]``; row i writes feature i (``None``: the
            pseudo-inverse of ``encoder``, so that decode∘encode projects onto the span).
        mean: ``[d_model]`` subtracted before encoding and added after decoding.
    """

    kind = "linear"

    def __init__(
        self,
        encoder: torch.Tensor,
        directions: torch.Tensor | None = None,
        mean: torch.Tensor | None = None,
        *,
        site: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(site=site, meta=meta)
        encoder = torch.as_tensor(encoder, dtype=torch.float32)
        if encoder.ndim != 2:
            raise ParameterError(f"encoder must be [n_features, d_model], got {tuple(encoder.shape)}")
        if directions is None:
            directions = torch.linalg.pinv(encoder.double()).T.float()
        directions = torch.as_tensor(directions, dtype=torch.float32)
        if directions.shape != encoder.shape:
            raise WidthMismatchError(
                f"directions {tuple(directions.shape)} and encoder {tuple(encoder.shape)} differ",
                hint="both are [n_features, d_model]",
            )
        if mean is None:
            mean = torch.zeros(encoder.shape[1])
        mean = torch.as_tensor(mean, dtype=torch.float32)
        if mean.shape != (encoder.shape[1],):
            raise WidthMismatchError(
                f"mean has shape {tuple(mean.shape)} but d_model is {encoder.shape[1]}")
        for name, tensor in (("encoder", encoder), ("directions", directions), ("mean", mean)):
            if not torch.isfinite(tensor).all():
                raise NonFiniteError(f"{type(self).__name__} {name} has NaN/inf values")
        self.register_buffer("encoder", encoder.contiguous())
        self.register_buffer("_directions", directions.contiguous())
        self.register_buffer("mean", mean.contiguous())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.encoder.T

    @property
    def separable(self) -> bool:
        return type(self).encode is LinearBasis.encode

    def encode_features(self, x: torch.Tensor, feature_ids: torch.Tensor | None = None
                        ) -> torch.Tensor:
        if feature_ids is None or not self.separable:
            return super().encode_features(x, feature_ids)
        return (x - self.mean) @ self.encoder[feature_ids].T

    @property
    def separable_rows(self) -> bool:
        """Whether ``encode_rows`` computes single features (as ``separable``)."""
        return self.separable

    def encode_rows(self, x: torch.Tensor, feature_ids: torch.Tensor) -> torch.Tensor:
        """Row ``r``'s coefficient of feature ``feature_ids[r]``, ``[R, ...]`` (see
        ``Dictionary.encode_rows``): one encoder row per row."""
        if not self.separable:
            return super().encode_rows(x, feature_ids)
        ids = feature_ids.to(self.encoder.device).long()
        return torch.einsum("r...d,rd->r...", x - self.mean, self.encoder[ids])

    @property
    def directions(self) -> torch.Tensor:
        return self._directions

    @property
    def architecture(self) -> str:
        """``featcircuits-<kind>`` (``featcircuits-pca``, ...): stored in SAELens' layout."""
        return f"featcircuits-{self.kind}"

    @property
    def decoder_bias(self) -> torch.Tensor:
        return self.mean


class NeuronBasis(LinearBasis):
    """The standard basis: feature i is dimension i of the activation."""

    kind = "neuron"

    def __init__(self, d_model: int, *, site: str | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        eye = torch.eye(int(d_model))
        super().__init__(eye, eye.clone(), torch.zeros(int(d_model)), site=site, meta=meta)

    def config(self) -> dict[str, Any]:
        return {"d_model": self.d_model}


class RandomBasis(LinearBasis):
    """A random basis (seeded): the control for 'is any basis as good?'.

    With ``n_features`` unset (or ``d_model``) a random orthonormal basis (a Haar rotation);
    fewer features take its first rows; more (an overcomplete "wide" dictionary, e.g. 32k
    features on a 128-wide model) use Gaussian unit-norm directions with the pseudo-inverse
    as encoder, so ``decode(encode(x)) == x`` still holds (up to float precision).
    """

    kind = "random"

    def __init__(self, d_model: int, *, seed: int = 0, mean: torch.Tensor | None = None,
                 n_features: int | None = None, site: str | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        d_model = int(d_model)
        n_features = d_model if n_features is None else int(n_features)
        if n_features < 1:
            raise ParameterError(f"n_features must be >= 1, got {n_features}")
        generator = torch.Generator().manual_seed(check_seed(seed))
        if n_features <= d_model:
            gaussian = torch.randn(d_model, d_model, generator=generator, dtype=torch.float64)
            q, r = torch.linalg.qr(gaussian)
            q = q * torch.sign(torch.diagonal(r))  # unique (Haar-distributed) rotation
            rotation = q.T[:n_features].float().contiguous()
            super().__init__(rotation, rotation.clone(), mean, site=site, meta=meta)
        else:
            directions = torch.randn(n_features, d_model, generator=generator,
                                     dtype=torch.float64)
            directions = directions / directions.norm(dim=1, keepdim=True)
            # pinv(directions).T via the [d, d] Gram matrix: cheap for n_features >> d_model
            encoder = directions @ torch.linalg.inv(directions.T @ directions)
            super().__init__(encoder.float(), directions.float(), mean, site=site, meta=meta)
        self.seed = int(seed)

    def config(self) -> dict[str, Any]:
        config = {"d_model": self.d_model, "seed": self.seed}
        if self.n_features != self.d_model:
            config["n_features"] = self.n_features
        return config


class PCABasis(LinearBasis):
    """Principal components, sorted by explained variance (largest first).

    ``encoder == directions == components`` (orthonormal rows); ``explained_variance``
    holds each component's variance.
    """

    kind = "pca"

    def __init__(self, components: torch.Tensor, mean: torch.Tensor,
                 explained_variance: torch.Tensor | None = None, *, site: str | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        components = torch.as_tensor(components, dtype=torch.float32)
        super().__init__(components, components.clone(), mean, site=site, meta=meta)
        if explained_variance is None:
            explained_variance = torch.zeros(components.shape[0])
        self.register_buffer("explained_variance",
                             torch.as_tensor(explained_variance, dtype=torch.float32))

    @classmethod
    def fit(cls, activations: torch.Tensor, n_components: int | None = None, *,
            site: str | None = None) -> PCABasis:
        """Fit on ``activations [n, d_model]`` (covariance accumulated in float64).

        Component signs are fixed so each component's largest-magnitude entry is positive.
        """
        data = torch.as_tensor(activations).reshape(-1, activations.shape[-1]).double()
        if data.shape[0] < 2:
            raise ParameterError(f"PCA needs at least 2 activations, got {data.shape[0]}")
        if not torch.isfinite(data).all():
            raise NonFiniteError("PCA input activations contain NaN/inf")
        d = data.shape[1]
        n_components = d if n_components is None else int(n_components)
        if not 0 < n_components <= d:
            raise ParameterError(f"n_components must be in 1..{d}, got {n_components}")
        mean = data.mean(0)
        centred = data - mean
        covariance = centred.T @ centred / (data.shape[0] - 1)
        return cls.from_moments(mean, covariance, n_components, site=site)

    @classmethod
    def from_moments(cls, mean: torch.Tensor, covariance: torch.Tensor, n_components: int, *,
                     site: str | None = None) -> PCABasis:
        """PCA from a mean ``[d]`` and covariance ``[d, d]`` (e.g. streamed moments)."""
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance.double())
        order = torch.argsort(eigenvalues, descending=True)[:n_components]
        components = eigenvectors[:, order].T
        pivot = components.abs().argmax(dim=1)
        signs = torch.sign(components[torch.arange(len(order), device=pivot.device), pivot])
        components = components * signs[:, None]
        return cls(components.float(), mean.float(), eigenvalues[order].clamp_min(0).float(),
                   site=site)


class ICABasis(LinearBasis):
    """Independent components: ``encoder`` is the unmixing matrix (from whitened, centred
    data to sources), ``directions`` the mixing matrix's columns as rows.

    Fitting lives in ``featcircuits.train.ica.fit_ica``.
    """

    kind = "ica"

    def __init__(self, unmixing: torch.Tensor, mean: torch.Tensor,
                 mixing: torch.Tensor | None = None, *, site: str | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        """``unmixing [n_components, d_model]``; ``mixing [d_model, n_components]``."""
        directions = None if mixing is None else torch.as_tensor(mixing, dtype=torch.float32).T
        super().__init__(unmixing, directions, mean, site=site, meta=meta)

    @property
    def unmixing(self) -> torch.Tensor:
        return self.encoder

    @property
    def mixing(self) -> torch.Tensor:
        """``[d_model, n_components]``."""
        return self.directions.T
