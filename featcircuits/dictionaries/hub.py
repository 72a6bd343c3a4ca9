"""Published dictionaries by name: SAELens releases, dictionary_learning SAEs, transcoders.

``load_dictionary`` accepts these specs besides local paths:

=====================================================  ==========================================
spec                                                   what it names
=====================================================  ==========================================
``saelens:<release>/<sae_id>``                         an SAE of SAELens' ``pretrained_saes.yaml``
                                                       (``saelens:gpt2-small-res-jb/blocks.8.hook_resid_pre``);
                                                       the release is the part before the first ``/``
``dictionary_learning:<model>/<site>[/<dict_id>]``     the Sparse-Feature-Circuits SAEs of
                                                       Pythia-70M-deduped, ``<site>`` as in their
                                                       layout (``resid_out_layer3``, ``embed``) or
                                                       ours (``resid_out.3``); ``dict_id``
                                                       ``10_32768`` by default
``circuit_tracer:<owner>/<repo>/<file>``               a per-layer transcoder file of circuit-tracer
                                                       (``circuit_tracer:mntss/transcoder-Llama-3.2-1B/layer_3``)
=====================================================  ==========================================

Files live in a cache folder: ``cache_dir=``, else ``$FEATCIRCUITS_CACHE``, else
``~/.cache/featcircuits``. Files already there are used without any network access; missing
ones are downloaded with ``huggingface_hub`` into it. Without network the error says which
``hf download`` command fetches them and where they must go.

Where the files are published (checked against the projects' sources):

* SAELens: the release table ``sae_lens/pretrained_saes.yaml`` (``repo_id`` + each SAE's
  ``path``, a folder with ``cfg.json`` and ``sae_weights.safetensors``). A curated subset for
  GPT-2 small and Pythia-70M-deduped ships as ``pretrained_saes.json``; with ``sae_lens``
  installed its full table is read too. Gemma Scope / Llama Scope releases (``params.npz``;
  ``hyperparams.json`` + checkpoint; R1-Distill ``config.json`` + weights) are read as SAELens
  converts them (``scope`` module).
* dictionary_learning: ``saprmarks/pythia-70m-deduped-saes`` holds one zip,
  ``dictionaries_pythia-70m-deduped_10.zip`` (about 2.4 GB, linked from the
  dictionary_learning and feature-circuits READMEs), which unpacks to
  ``pythia-70m-deduped/<site>/10_32768/ae.pt``. featcircuits keeps the zip in the cache and
  extracts only the requested dictionary.
* circuit-tracer: per-layer transcoder repos (``layer_L.safetensors`` + ``config.yaml`` with
  ``feature_input_hook`` / ``feature_output_hook``).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from featcircuits.dictionaries.base import Dictionary
from featcircuits.errors import DictionaryLoadError, SiteError
from featcircuits.model.sites import Site

SCHEMES = ("saelens", "dictionary_learning", "circuit_tracer")
CACHE_ENV = "FEATCIRCUITS_CACHE"
_SPEC = re.compile(r"^(?P<scheme>[a-z_]+):(?P<rest>.*)$")
# SAELens conversions featcircuits reads (featcircuits.dictionaries.scope): the files of one
# SAE inside its folder, as SAELens' gemma_2 / llama_scope loaders download them
SCOPE_FILES: dict[str, tuple[str, ...]] = {
    "gemma_2": ("params.npz",),
    "llama_scope": ("hyperparams.json", "checkpoints/final.safetensors"),
    "llama_scope_r1_distill": ("config.json", "sae_weights.safetensors"),
}

DICTIONARY_LEARNING_RELEASES: dict[str, dict[str, Any]] = {
    "pythia-70m-deduped": {
        "repo_id": "saprmarks/pythia-70m-deduped-saes",
        "archive": "dictionaries_pythia-70m-deduped_10.zip",
        "dict_ids": ("10_32768",),
        "n_layers": 6,
    },
}
_DL_SITE = re.compile(r"^(embed|(attn_out|mlp_out|resid_out)_layer(\d+))$")


# ----------------------------------------------------------------------------- specs
def is_spec(path: Any) -> bool:
    """Whether ``path`` is a ``scheme:...`` spec (and not an existing local path)."""
    if not isinstance(path, str):
        return False
    match = _SPEC.match(path)
    return match is not None and match.group("scheme") in SCHEMES and not os.path.exists(path)


def default_cache_dir() -> Path:
    """``$FEATCIRCUITS_CACHE`` or ``~/.cache/featcircuits``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "featcircuits").expanduser()


def _repo_folder(repo_id: str) -> str:
    return repo_id.replace("/", "--")


@dataclass
class Fetched:
    """A spec resolved to local files: ``path`` for ``load_dictionary`` plus what to adjust."""

    path: Path
    spec: str
    site: str | None = None
    center_input: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    norm_scaling_factor: float | None = None

    def adapt(self, dictionary: Dictionary) -> Dictionary:
        """Apply what the release table says and the files do not (centring, site, source,
        a Llama Scope SAE's ``norm_scaling_factor``)."""
        if self.norm_scaling_factor is not None:
            from featcircuits.dictionaries.scope import refold

            refold(dictionary, self.norm_scaling_factor)  # type: ignore[arg-type]
        if self.center_input:
            dictionary = _centered(dictionary, self.spec)
        if self.site is not None:
            dictionary.site = self.site
        dictionary.meta.update(self.meta)
        dictionary.meta["spec"] = self.spec
        return dictionary


def fetch(spec: str, *, cache_dir: str | os.PathLike[str] | None = None,
          progress: bool = True) -> Fetched:
    """Resolve ``spec`` to files in the cache, downloading what is missing.

    ``progress=False`` hides featcircuits' own bar (unzipping a dictionary_learning archive);
    huggingface_hub's download bars follow its own switch
    (``huggingface_hub.utils.disable_progress_bars``, ``HF_HUB_DISABLE_PROGRESS_BARS``).
    """
    match = _SPEC.match(spec)
    if match is None or match.group("scheme") not in SCHEMES:
        raise DictionaryLoadError(f"unknown dictionary spec {spec!r}",
                                  hint="write " + ", ".join(f"'{s}:...'" for s in SCHEMES)
                                  + " or pass a local folder")
    scheme, rest = match.group("scheme"), match.group("rest").strip()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if scheme == "saelens":
        return _fetch_saelens(resolve_saelens(rest), root, spec)
    if scheme == "dictionary_learning":
        return _fetch_dictionary_learning(resolve_dictionary_learning(rest), root, spec,
                                          progress=progress)
    return _fetch_circuit_tracer(resolve_circuit_tracer(rest), root, spec)


def expand(spec: str) -> list[str]:
    """A spec naming a whole set → one spec per dictionary.

    ``saelens:<release>`` → every SAE of the release; ``dictionary_learning:<model>`` →
    its 19 sites (``embed`` and ``attn_out``/``mlp_out``/``resid_out`` of each layer). A
    spec that already names one dictionary comes back alone.
    """
    match = _SPEC.match(spec)
    if match is None or match.group("scheme") not in SCHEMES:
        raise DictionaryLoadError(f"unknown dictionary spec {spec!r}",
                                  hint="write " + ", ".join(f"'{s}:...'" for s in SCHEMES))
    scheme, rest = match.group("scheme"), match.group("rest").strip().strip("/")
    if scheme == "saelens" and "/" not in rest:
        if rest not in saelens_releases():
            resolve_saelens(f"{rest}/-")  # raises, naming close matches
        return [f"saelens:{rest}/{sae['id']}" for sae in saelens_releases()[rest]["saes"]]
    if scheme == "dictionary_learning" and "/" not in rest:
        if rest not in DICTIONARY_LEARNING_RELEASES:
            resolve_dictionary_learning(f"{rest}/embed")  # raises with close matches
        layers = range(DICTIONARY_LEARNING_RELEASES[rest]["n_layers"])
        sites = ["embed"] + [f"{kind}_layer{layer}" for layer in layers
                             for kind in ("attn_out", "mlp_out", "resid_out")]
        return [f"dictionary_learning:{rest}/{site}" for site in sites]
    return [spec]


# ----------------------------------------------------------------------------- SAELens
@dataclass(frozen=True)
class SaeLensEntry:
    """One SAE of a SAELens release: ``path`` is its folder inside ``repo_id``."""

    release: str
    sae_id: str
    repo_id: str
    path: str
    model: str | None = None
    conversion_func: str | None = None
    config_overrides: dict[str, Any] | None = None
    norm_scaling_factor: float | None = None


@lru_cache(maxsize=1)
def saelens_releases() -> dict[str, dict[str, Any]]:
    """SAELens' release table: the curated copy, extended by ``sae_lens``'s own if installed."""
    text = resources.files("featcircuits.dictionaries").joinpath("pretrained_saes.json")
    table = dict(json.loads(text.read_text(encoding="utf-8"))["releases"])
    table.update(_installed_sae_lens_table())
    return table


def _installed_sae_lens_table() -> dict[str, dict[str, Any]]:
    import importlib.util

    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        return {}
    for location in spec.submodule_search_locations:
        path = Path(location) / "pretrained_saes.yaml"
        if path.is_file():
            import yaml

            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            data = data.get("SAE_LOOKUP", data)  # older SAELens wrap the table
            return {name: entry for name, entry in data.items()
                    if isinstance(entry, dict) and "repo_id" in entry and "saes" in entry}
    return {}


def resolve_saelens(rest: str) -> SaeLensEntry:
    """``"<release>/<sae_id>"`` → repo and folder (the id may itself contain ``/``)."""
    release, _, sae_id = rest.partition("/")
    table = saelens_releases()
    if release not in table:
        close = difflib.get_close_matches(release, list(table), n=5, cutoff=0.4)
        raise DictionaryLoadError(
            f"unknown SAELens release {release!r}",
            hint=(f"did you mean {', '.join(close)}? " if close else "")
            + f"known releases: {', '.join(sorted(table)[:12])}"
            + (" ..." if len(table) > 12 else "")
            + "; install sae_lens for its full table")
    entry = table[release]
    ids = {str(sae["id"]): sae for sae in entry["saes"]}
    if not sae_id:
        raise DictionaryLoadError(
            f"spec 'saelens:{rest}' names no SAE of release {release!r}",
            hint=f"write saelens:{release}/<sae_id>, e.g. saelens:{release}/{next(iter(ids))}")
    if sae_id not in ids:
        close = difflib.get_close_matches(sae_id, list(ids), n=5, cutoff=0.5)
        raise DictionaryLoadError(
            f"release {release!r} has no SAE {sae_id!r}",
            hint=(f"did you mean {', '.join(close)}? " if close else "")
            + f"its SAEs: {', '.join(list(ids)[:8])}" + (" ..." if len(ids) > 8 else ""))
    factor = ids[sae_id].get("norm_scaling_factor")
    return SaeLensEntry(release, sae_id, str(entry["repo_id"]), str(ids[sae_id]["path"]),
                        entry.get("model"), entry.get("conversion_func"),
                        entry.get("config_overrides"),
                        float(factor) if isinstance(factor, (int, float)) else None)


def _fetch_saelens(entry: SaeLensEntry, root: Path, spec: str) -> Fetched:
    if entry.conversion_func in SCOPE_FILES:
        return _fetch_scope(entry, root, spec)
    if entry.conversion_func:
        raise DictionaryLoadError(
            f"SAELens release {entry.release!r} is stored in another format (SAELens converts "
            f"it with {entry.conversion_func!r}), which featcircuits does not read",
            hint="featcircuits reads releases in SAELens' own folder layout and those SAELens "
            f"converts with {', '.join(SCOPE_FILES)} (Gemma Scope, Llama Scope); convert it "
            "with sae_lens and save_dictionary, or pick another release")
    overrides = entry.config_overrides or {}
    normalize = overrides.get("normalize_activations")
    if normalize not in (None, "none"):
        raise DictionaryLoadError(
            f"SAELens release {entry.release!r} uses normalize_activations={normalize!r}, "
            "which featcircuits does not apply",
            hint="use an SAE trained without activation normalisation")
    local_dir = root / "saelens" / _repo_folder(entry.repo_id)
    files = [f"{entry.path}/cfg.json", f"{entry.path}/sae_weights.safetensors"]
    _ensure_files(entry.repo_id, files, local_dir, include=f"{entry.path}/*")
    kwargs = overrides.get("model_from_pretrained_kwargs") or {}
    return Fetched(local_dir / entry.path, spec,
                   center_input=bool(kwargs.get("center_writing_weights")),
                   meta={"source": "saelens", "release": entry.release, "sae_id": entry.sae_id,
                         "repo_id": entry.repo_id, "model_name": entry.model})


def _fetch_scope(entry: SaeLensEntry, root: Path, spec: str) -> Fetched:
    """A Gemma Scope (``gemma_2``) or Llama Scope (``llama_scope``) SAE: the files SAELens'
    converter downloads, read by ``featcircuits.dictionaries.scope``."""
    local_dir = root / "saelens" / _repo_folder(entry.repo_id)
    files = [f"{entry.path}/{name}" for name in SCOPE_FILES[str(entry.conversion_func)]]
    _ensure_files(entry.repo_id, files, local_dir, include=f"{entry.path}/*")
    meta = {"source": "saelens", "release": entry.release, "sae_id": entry.sae_id,
            "repo_id": entry.repo_id}
    if entry.conversion_func == "gemma_2":
        from featcircuits.dictionaries.scope import gemma_scope_hook

        meta["hook_name"], meta["model_name"] = gemma_scope_hook(entry.repo_id, entry.path)
    return Fetched(local_dir / entry.path, spec, meta=meta,
                   norm_scaling_factor=None if entry.conversion_func == "gemma_2"
                   else entry.norm_scaling_factor)


def _centered(dictionary: Dictionary, spec: str) -> Dictionary:
    from featcircuits.dictionaries.centered import CenteredSparseAutoencoder
    from featcircuits.dictionaries.sae import SparseAutoencoder

    if isinstance(dictionary, CenteredSparseAutoencoder):
        return dictionary
    if not isinstance(dictionary, SparseAutoencoder):
        raise DictionaryLoadError(f"{spec!r}: expected an SAE, got {type(dictionary).__name__}")
    centered = CenteredSparseAutoencoder(
        dictionary.d_model, dictionary.n_features, activation=dictionary.activation,
        k=dictionary.k, tied=dictionary.tied, pre_encoder_bias=dictionary.pre_encoder_bias,
        site=dictionary.site, meta=dictionary.meta)
    centered.load_state_dict(dictionary.state_dict())
    return centered


# ------------------------------------------------------------------ dictionary_learning
@dataclass(frozen=True)
class DictionaryLearningEntry:
    """One SAE of the Sparse-Feature-Circuits release: ``member`` is its ``ae.pt`` in the zip."""

    model: str
    dl_site: str
    dict_id: str
    site: str
    repo_id: str
    archive: str

    @property
    def member(self) -> str:
        return f"{self.model}/{self.dl_site}/{self.dict_id}/ae.pt"


def resolve_dictionary_learning(rest: str) -> DictionaryLearningEntry:
    """``"<model>/<site>[/<dict_id>]"`` → repo, archive and member path."""
    parts = [part for part in rest.strip().strip("/").split("/") if part]
    if parts and parts[0] == "dictionaries":
        parts = parts[1:]
    if parts and parts[-1] == "ae.pt":
        parts = parts[:-1]
    known = ", ".join(DICTIONARY_LEARNING_RELEASES)
    if len(parts) < 2 or len(parts) > 3:
        raise DictionaryLoadError(
            f"cannot parse 'dictionary_learning:{rest}'",
            hint="write dictionary_learning:<model>/<site>[/<dict_id>], e.g. "
            "dictionary_learning:pythia-70m-deduped/resid_out_layer3/10_32768 or "
            "dictionary_learning:pythia-70m-deduped/resid_out.3")
    model, site_text = parts[0], parts[1]
    if model not in DICTIONARY_LEARNING_RELEASES:
        close = difflib.get_close_matches(model, list(DICTIONARY_LEARNING_RELEASES), n=3)
        raise DictionaryLoadError(
            f"no published dictionary_learning SAEs known for model {model!r}",
            hint=(f"did you mean {', '.join(close)}? " if close else "") + f"known: {known}; "
            "for your own dictionary_learning folders pass their path to load_dictionary")
    release = DICTIONARY_LEARNING_RELEASES[model]
    dl_site, site = _dictionary_learning_site(site_text, release["n_layers"])
    dict_id = parts[2] if len(parts) == 3 else release["dict_ids"][0]
    if dict_id not in release["dict_ids"]:
        raise DictionaryLoadError(
            f"dictionary id {dict_id!r} is not published for {model}",
            hint=f"published: {', '.join(release['dict_ids'])}")
    return DictionaryLearningEntry(model, dl_site, dict_id, site, release["repo_id"],
                                   release["archive"])


def _dictionary_learning_site(text: str, n_layers: int) -> tuple[str, str]:
    """``resid_out_layer3`` or ``resid_out.3`` → (``resid_out_layer3``, ``resid_out.3``)."""
    valid = ["embed"] + [f"{kind}_layer{layer}" for layer in range(n_layers)
                         for kind in ("attn_out", "mlp_out", "resid_out")]
    match = _DL_SITE.match(text)
    if match is not None:
        dl_site = text
    else:
        try:
            site = Site.parse(text)
        except SiteError:
            site = None
        if site is None or site.kind not in ("embed", "attn_out", "mlp_out", "resid_out"):
            close = difflib.get_close_matches(text, valid, n=3)
            raise DictionaryLoadError(
                f"no dictionary_learning SAE at site {text!r}",
                hint=(f"did you mean {', '.join(close)}? " if close else "")
                + "sites: embed, attn_out_layerL, mlp_out_layerL, resid_out_layerL "
                "(or embed, attn_out.L, mlp_out.L, resid_out.L)")
        dl_site = "embed" if site.kind == "embed" else f"{site.kind}_layer{site.layer}"
    if dl_site not in valid:
        raise DictionaryLoadError(f"site {text!r} is out of range: the model has {n_layers} "
                                  "layers", hint=f"use a layer from 0 to {n_layers - 1}")
    match = _DL_SITE.match(dl_site)
    site_name = "embed" if dl_site == "embed" else f"{match.group(2)}.{int(match.group(3))}"
    return dl_site, site_name


def _fetch_dictionary_learning(entry: DictionaryLearningEntry, root: Path, spec: str, *,
                               progress: bool = True) -> Fetched:
    local_dir = root / "dictionary_learning" / _repo_folder(entry.repo_id)
    meta = {"source": "dictionary_learning", "repo_id": entry.repo_id,
            "model_name": f"EleutherAI/{entry.model}", "dict_id": entry.dict_id}
    for candidate in (local_dir / entry.member, local_dir / "dictionaries" / entry.member):
        if candidate.is_file():
            return Fetched(candidate.parent, spec, site=entry.site, meta=meta)
    archive = local_dir / entry.archive
    if not archive.is_file():
        _ensure_files(entry.repo_id, [entry.archive], local_dir, include=None,
                      note=f"(about 2.4 GB) — or unzip it yourself so that "
                      f"{local_dir / entry.member} exists")
    return Fetched(_extract_member(archive, entry.member, local_dir, progress=progress), spec,
                   site=entry.site, meta=meta)


def _extract_member(archive: Path, member: str, local_dir: Path, *,
                    progress: bool = True) -> Path:
    """Extract the ``ae.pt`` ending in ``member`` (and its config.json) into ``local_dir``;
    ``progress=False`` hides the unzip bar."""
    from tqdm.auto import tqdm

    from featcircuits.writes import atomic_path

    try:
        with zipfile.ZipFile(archive) as handle:
            names = handle.namelist()
            matches = [name for name in names if name == member or name.endswith("/" + member)]
            if not matches:
                raise DictionaryLoadError(
                    f"{str(archive)!r} holds no {member!r}",
                    hint=f"it holds e.g. {', '.join(n for n in names if n.endswith('.pt'))[:200]}")
            folder_name = matches[0][: -len("ae.pt")]
            wanted = [name for name in names if name.startswith(folder_name)
                      and name[len(folder_name):] in ("ae.pt", "config.json")]
            for name in wanted:
                target = local_dir / name
                info = handle.getinfo(name)
                with handle.open(name) as source, atomic_path(target) as tmp, \
                        open(tmp, "wb") as sink, tqdm(total=info.file_size, unit="B",
                                                      unit_scale=True, desc=f"unzip {name}",
                                                      leave=False,
                                                      disable=not progress) as bar:
                    while chunk := source.read(1 << 20):
                        sink.write(chunk)
                        bar.update(len(chunk))
    except zipfile.BadZipFile as exc:
        raise DictionaryLoadError(f"{str(archive)!r} is not a valid zip ({exc})",
                                  hint="the download was probably cut short; delete it and "
                                  "download it again") from exc
    return local_dir / folder_name.rstrip("/")


# ----------------------------------------------------------------------- circuit-tracer
@dataclass(frozen=True)
class CircuitTracerEntry:
    """One per-layer transcoder file ``filename`` in hub repo ``repo_id``."""

    repo_id: str
    filename: str


def resolve_circuit_tracer(rest: str) -> CircuitTracerEntry:
    """``"<owner>/<repo>/<file>"`` → repo and file (``layer_3`` means ``layer_3.safetensors``)."""
    parts = [part for part in rest.strip().strip("/").split("/") if part]
    if len(parts) < 3:
        raise DictionaryLoadError(
            f"cannot parse 'circuit_tracer:{rest}'",
            hint="write circuit_tracer:<owner>/<repo>/<file>, e.g. "
            "circuit_tracer:mntss/transcoder-Llama-3.2-1B/layer_3")
    filename = "/".join(parts[2:])
    if not filename.endswith(".safetensors"):
        if filename.endswith(".npz"):
            raise DictionaryLoadError(
                f"{filename!r}: Gemma Scope .npz transcoders are not read by featcircuits",
                hint="convert it to circuit-tracer's safetensors layout (save_transcoder)")
        filename += ".safetensors"
    return CircuitTracerEntry(f"{parts[0]}/{parts[1]}", filename)


def _fetch_circuit_tracer(entry: CircuitTracerEntry, root: Path, spec: str) -> Fetched:
    local_dir = root / "circuit_tracer" / _repo_folder(entry.repo_id)
    target = local_dir / entry.filename
    config = local_dir / "config.yaml"
    missing = [name for name, path in ((entry.filename, target), ("config.yaml", config))
               if not path.is_file()]
    if missing:
        _ensure_files(entry.repo_id, missing, local_dir, include=None,
                      optional=("config.yaml",))
    return Fetched(target, spec, meta={"repo_id": entry.repo_id})


# ----------------------------------------------------------------------------- download
def download_command(repo_id: str, local_dir: Path, filenames: list[str] | None = None,
                     include: str | None = None) -> str:
    """The ``hf download`` command that puts ``filenames`` (or ``include``) into ``local_dir``."""
    words = ["hf", "download", repo_id, *(filenames or [])]
    if include is not None:
        words += ["--include", include]
    words += ["--local-dir", str(local_dir)]
    return " ".join(shlex.quote(word) for word in words)


def _ensure_files(repo_id: str, filenames: list[str], local_dir: Path, *, include: str | None,
                  note: str = "", optional: tuple[str, ...] = ()) -> None:
    """Download the missing ``filenames`` of ``repo_id`` into ``local_dir``."""
    missing = [name for name in filenames if not (local_dir / name).is_file()]
    for name in missing:
        try:
            _hf_hub_download(repo_id=repo_id, filename=name, local_dir=str(local_dir))
        except Exception as exc:  # offline, 404, auth, broken connection: all say the same
            if name in optional and type(exc).__name__ == "EntryNotFoundError":
                continue  # the repo simply has no such file
            command = download_command(repo_id, local_dir, None if include else missing,
                                       include)
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DictionaryLoadError(
                f"{name!r} of hub repo {repo_id!r} is not in the cache ({local_dir}) and could "
                f"not be downloaded: {type(exc).__name__}: {first_line}",
                hint=f"on a machine with network run `{command}` {note}".rstrip()
                + f", then copy that folder to {local_dir} on this machine (the cache root "
                f"is cache_dir=, else ${CACHE_ENV}, else ~/.cache/featcircuits)") from exc


def _hf_hub_download(**kwargs) -> str:
    try:
        import huggingface_hub
    except ImportError as exc:  # pragma: no cover - transformers depends on it
        raise DictionaryLoadError("downloading needs huggingface_hub",
                                  hint="pip install huggingface_hub") from exc
    return huggingface_hub.hf_hub_download(**kwargs)
