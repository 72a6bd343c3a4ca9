"""Hostile dictionary files: memory bombs, non-files and values that used to load wrongly.

Memory bombs never allocate what they claim: the weights are sparse files (``truncate``)
behind crafted safetensors headers, and every bomb is loaded in one child process whose
address space is capped at 2 GiB (``RLIMIT_AS``), so a missing check fails the test instead
of the machine. The refusal message is checked too (an allocation failure wrapped as a
"could not read" error does not pass).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from featcircuits import load_dictionary, save_dictionary
from featcircuits.dictionaries import SparseAutoencoder
from featcircuits.errors import DictionaryLoadError

ROOT = Path(__file__).resolve().parents[2]
D, N = 8, 16
HUGE = 20_000_000  # features claimed by the bombs: [128, HUGE] float32 is 10.24 GB
CHILD = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))
from featcircuits import load_dictionary
out = {}
for name, path in json.loads(sys.argv[1]).items():
    start = time.monotonic()
    try:
        load_dictionary(path)
        out[name] = {"error": None, "message": ""}
    except BaseException as exc:
        out[name] = {"error": type(exc).__name__, "message": str(exc)}
    out[name]["seconds"] = time.monotonic() - start
print(json.dumps(out))
"""


# ------------------------------------------------------------------------ file makers
def _crafted_safetensors(path: Path, entries: dict, *, metadata: dict | None = None,
                         pad: int = 0) -> None:
    """A safetensors file whose header declares ``entries`` ``{name: (dtype, shape)}``; the
    data is a hole (sparse), ``pad`` extra bytes at the end."""
    sizes = {"F32": 4, "BF16": 2}
    header, offset = {}, 0
    for name, (dtype, shape) in entries.items():
        n = sizes[dtype]
        for dim in shape:
            n *= dim
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset + pad)


def _sae_entries(d_in: int, d_sae: int, dtype: str = "F32") -> dict:
    return {"W_enc": (dtype, (d_in, d_sae)), "b_enc": (dtype, (d_sae,)),
            "W_dec": (dtype, (d_sae, d_in)), "b_dec": (dtype, (d_in,))}


def _foreign_cfg(folder: Path, d_in: int, d_sae: int, **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"architecture": "standard", "d_in": d_in, "d_sae": d_sae,
           "hook_name": "blocks.1.hook_resid_post", "apply_b_dec_to_input": True,
           "normalize_activations": "none", **extra}
    (folder / "cfg.json").write_text(json.dumps(cfg))


def _sae_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(D, N, generator=generator),
            "b_enc": torch.randn(N, generator=generator),
            "W_dec": torch.randn(N, D, generator=generator),
            "b_dec": torch.randn(D, generator=generator)}


def _foreign_saelens(folder: Path, tensors=None, **cfg_extra) -> Path:
    """A SAELens folder without featcircuits' checksum (as SAELens writes it)."""
    _foreign_cfg(folder, D, N, **cfg_extra)
    save_file(tensors or _sae_tensors(), str(folder / "sae_weights.safetensors"))
    return folder


def _native(folder: Path) -> Path:
    torch.manual_seed(0)
    save_dictionary(SparseAutoencoder(D, N, site="resid_out.1"), folder)
    return folder


def _transcoder_file(folder: Path, metadata: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    tensors = {"W_enc": torch.randn(N, D, generator=generator),
               "W_dec": torch.randn(N, D, generator=generator),
               "b_enc": torch.randn(N, generator=generator),
               "b_dec": torch.randn(D, generator=generator)}
    save_file(tensors, str(folder / "layer_0.safetensors"), metadata=metadata)
    return folder / "layer_0.safetensors"


def _dictionary_learning(folder: Path, **extra: torch.Tensor) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    state = {"encoder.weight": torch.randn(N, D, generator=generator),
             "encoder.bias": torch.randn(N, generator=generator),
             "decoder.weight": torch.randn(D, N, generator=generator),
             "bias": torch.randn(D, generator=generator), **extra}
    torch.save(state, folder / "ae.pt")
    return folder


BILLION_LAUGHS = "a: &a [" + ", ".join(["lol"] * 9) + "]\n" + "".join(
    f"{b}: &{b} [" + ", ".join([f"*{a}"] * 9) + "]\n"
    for a, b in zip("abcdefgh", "bcdefghi", strict=True))


# ------------------------------------------------------------------ the capped child
def _bombs(root: Path) -> dict[str, Path]:
    """Every memory bomb and non-file, by case name → the path to load."""
    cases = {}
    folder = root / "bf16_wide"  # cfg.json says d_sae=512, the header W_enc [128, 2e7] bf16
    _foreign_cfg(folder, 128, 512)
    _crafted_safetensors(folder / "sae_weights.safetensors", _sae_entries(128, HUGE, "BF16"))
    cases["bf16_wide"] = folder
    folder = root / "sparse_10gb"  # d_sae=512 in cfg.json, a 10 GB float32 W_enc in the header
    _foreign_cfg(folder, 128, 512)
    _crafted_safetensors(folder / "sae_weights.safetensors", _sae_entries(128, HUGE))
    cases["sparse_10gb"] = folder
    folder = root / "consistent_huge"  # config and header agree on 2e7 features: 20 GB
    _foreign_cfg(folder, 128, HUGE)
    _crafted_safetensors(folder / "sae_weights.safetensors", _sae_entries(128, HUGE))
    cases["consistent_huge"] = folder
    folder = _native(root / "native_padded")  # a saved dictionary padded to 10.2 GB
    with open(folder / "sae_weights.safetensors", "r+b") as handle:
        handle.truncate(10_200_000_000)
    cases["native_padded"] = folder
    folder = root / "transcoder_huge"
    folder.mkdir()
    _crafted_safetensors(folder / "layer_0.safetensors", {
        "W_enc": ("F32", (HUGE, 128)), "W_dec": ("F32", (HUGE, 128)),
        "b_enc": ("F32", (HUGE,)), "b_dec": ("F32", (128,))})
    cases["transcoder_huge"] = folder / "layer_0.safetensors"
    path = _transcoder_file(root / "alias_bomb")
    (path.parent / "config.yaml").write_text(BILLION_LAUGHS)
    cases["alias_bomb"] = path
    folder = _native(root / "fifo")
    (folder / "cfg.json").unlink()
    os.mkfifo(folder / "cfg.json")
    cases["fifo"] = folder
    folder = _native(root / "dev_zero")
    (folder / "cfg.json").unlink()
    (folder / "cfg.json").symlink_to("/dev/zero")
    cases["dev_zero"] = folder
    folder = _native(root / "huge_cfg")
    with open(folder / "cfg.json", "r+b") as handle:
        handle.truncate(2**30)
    cases["huge_cfg"] = folder
    folder = _dictionary_learning(root / "dl_fifo")
    os.mkfifo(folder / "config.json")
    cases["dl_fifo"] = folder
    folder = root / "zip_bomb"  # a deflated member expanding to 512 MiB
    folder.mkdir()
    with zipfile.ZipFile(folder / "ae.pt", "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open("archive/data/0", "w", force_zip64=True) as member:
        block = bytes(2**20)
        for _ in range(512):
            member.write(block)
    cases["zip_bomb"] = folder
    return cases


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, dict]:
    """The outcome of loading every bomb in one child capped at 2 GiB of address space."""
    cases = _bombs(tmp_path_factory.mktemp("bombs"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", CHILD,
                             json.dumps({name: str(path) for name, path in cases.items()})],
                            capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _refused(outcome: dict, *words: str) -> None:
    assert outcome["error"] == "DictionaryLoadError", outcome
    assert "could not read" not in outcome["message"], outcome  # not a wrapped MemoryError
    for word in words:
        assert word in outcome["message"], outcome
    assert outcome["seconds"] < 20, outcome


def test_sparse_weights_claiming_10gb_against_small_config(bombs):
    """A SAELens folder whose cfg.json says d_sae=512 but whose sparse weights file's header
    claims W_enc [128, 2e7] (10 GB float32) → DictionaryLoadError naming W_enc and both
    shapes, from the header, with nothing allocated (2 GiB address-space cap)."""
    _refused(bombs["sparse_10gb"], "W_enc", "(128, 20000000)", "(128, 512)")


def test_bf16_weights_wider_than_config(bombs):
    """A bf16 W_enc [128, 2e7] while cfg.json says d_sae=512 (it used to be converted to
    float32 before the shape check) → DictionaryLoadError naming the shapes; nothing
    allocated."""
    _refused(bombs["bf16_wide"], "W_enc", "(128, 512)")


def test_consistent_but_larger_than_memory(bombs):
    """Config and header agree on 2e7 features (20 GB of float32) in a process limited to
    2 GiB → DictionaryLoadError saying how much memory it needs and has, before loading."""
    _refused(bombs["consistent_huge"], "GiB", "memory")


def test_native_weights_padded_to_10gb(bombs):
    """A saved dictionary whose weights file was extended to a 10.2 GB sparse file → refused
    from the header (the file is longer than the header declares) before the checksum reads
    it."""
    _refused(bombs["native_padded"], "the file has 10200000000")


def test_transcoder_header_claiming_20gb(bombs):
    """A circuit-tracer transcoder whose header claims 2e7 features (20 GB) in a 2 GiB
    process → DictionaryLoadError about memory, nothing allocated."""
    _refused(bombs["transcoder_huge"], "memory")


def test_config_yaml_billion_laughs(bombs):
    """A transcoder's config.yaml that is a YAML alias bomb (9^9 strings) → DictionaryLoadError
    naming the anchor, in well under a second of parsing, not 45 s and 6 GiB."""
    _refused(bombs["alias_bomb"], "config.yaml", "anchor")


@pytest.mark.parametrize("case", ["fifo", "dev_zero", "huge_cfg", "dl_fifo"])
def test_config_that_is_not_a_small_regular_file(bombs, case):
    """cfg.json that is a FIFO, a link to /dev/zero or a 1 GiB file, and a dictionary_learning
    config.json that is a FIFO → DictionaryLoadError (no hang, no endless read)."""
    _refused(bombs[case], "cfg.json" if case != "dl_fifo" else "config.json")


def test_zip_bomb_ae_pt(bombs):
    """A dictionary_learning ae.pt that is a zip archive with a deflated member expanding to
    512 MiB → DictionaryLoadError naming the compressed member, before torch.load."""
    _refused(bombs["zip_bomb"], "archive/data/0", "compressed")


# ------------------------------------------------------------------ silent wrong loads
@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int64, torch.bool])
def test_integer_weights_refused(tmp_path, dtype):
    """SAELens weights stored as int8, uint8, int64 or bool (they loaded as floats without a
    word) → DictionaryLoadError naming the tensor and its dtype."""
    tensors = _sae_tensors()
    tensors["W_dec"] = (tensors["W_dec"] > 0).to(dtype)
    folder = _foreign_saelens(tmp_path / "d", tensors)
    name = {torch.int8: "I8", torch.uint8: "U8", torch.int64: "I64", torch.bool: "BOOL"}[dtype]
    with pytest.raises(DictionaryLoadError, match=f"'W_dec'.*dtype {name}"):
        load_dictionary(folder)


def test_complex_decoder_bias_refused(tmp_path):
    """A complex64 b_dec (its imaginary part was dropped) → DictionaryLoadError naming b_dec."""
    tensors = _sae_tensors()
    tensors["b_dec"] = torch.complex(tensors["b_dec"], torch.ones(D))
    with pytest.raises(DictionaryLoadError, match="'b_dec'.*C64"):
        load_dictionary(_foreign_saelens(tmp_path / "d", tensors))


def test_integer_weights_in_other_layouts_refused(tmp_path):
    """int8 weights in a circuit-tracer transcoder and an int64 decoder in a
    dictionary_learning ae.pt → DictionaryLoadError naming the tensor and dtype."""
    path = _transcoder_file(tmp_path / "t")
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    tensors["W_enc"] = tensors["W_enc"].to(torch.int8)
    save_file(tensors, str(path))
    with pytest.raises(DictionaryLoadError, match="'W_enc'.*I8"):
        load_dictionary(path)
    folder = _dictionary_learning(tmp_path / "dl")
    state = torch.load(folder / "ae.pt", weights_only=True)
    state["decoder.weight"] = state["decoder.weight"].to(torch.int64)
    torch.save(state, folder / "ae.pt")
    with pytest.raises(DictionaryLoadError, match="'decoder.weight'.*int64"):
        load_dictionary(folder)


@pytest.mark.parametrize("value", ["false", "no", "true", 0, 1, None])
def test_config_booleans_must_be_json_booleans(tmp_path, value):
    """apply_b_dec_to_input written as "false", "no", "true", 0, 1 or null ("false" was read
    as True) → DictionaryLoadError naming the key and the value."""
    folder = _foreign_saelens(tmp_path / "d", apply_b_dec_to_input=value)
    with pytest.raises(DictionaryLoadError, match="apply_b_dec_to_input.*JSON boolean"):
        load_dictionary(folder)


@pytest.mark.parametrize("cfg", [{"k": "8"}, {"k": 3.7}, {"k": True}, {"k": 0},
                                 {"activation_fn_kwargs": {"k": "8"}},
                                 {"k": 4, "activation_fn_kwargs": {"k": 5}}])
def test_topk_k_must_be_a_positive_int(tmp_path, cfg):
    """A TopK SAE's k of "8", 3.7, True or 0 (they became 8, 3 and 1), or k disagreeing with
    activation_fn_kwargs.k → DictionaryLoadError naming k."""
    folder = _foreign_saelens(tmp_path / "d", **{"architecture": "topk", **cfg})
    with pytest.raises(DictionaryLoadError, match="'k'|k'"):
        load_dictionary(folder)


def test_topk_k_valid_still_loads(tmp_path):
    """A TopK SAE with k 4 in both places → loads with k=4 (the strict check refuses only bad
    values)."""
    folder = _foreign_saelens(tmp_path / "d", architecture="topk", k=4,
                              activation_fn_kwargs={"k": 4})
    assert load_dictionary(folder).k == 4


def test_dictionary_learning_extra_threshold_refused(tmp_path):
    """An extra threshold [d_sae] tensor in a dictionary_learning ae.pt (dropped, and the SAE
    loaded as ReLU) → DictionaryLoadError naming 'threshold'."""
    folder = _dictionary_learning(tmp_path / "dl", threshold=torch.full((N,), 0.5))
    with pytest.raises(DictionaryLoadError, match="'threshold'"):
        load_dictionary(folder)


@pytest.mark.parametrize("k", [torch.tensor(2.5), torch.tensor(True), torch.tensor(0)])
def test_dictionary_learning_bad_k_tensor_refused(tmp_path, k):
    """A dictionary_learning TopK ae.pt whose k tensor is 2.5, True or 0 → DictionaryLoadError
    naming k."""
    folder = _dictionary_learning(tmp_path / "dl", k=k)
    with pytest.raises(DictionaryLoadError, match="'k'"):
        load_dictionary(folder)


def test_saelens_extra_tensor_refused(tmp_path):
    """A SAELens ReLU SAE whose weights also hold threshold and scaling_factor → refused,
    naming both (loading would silently drop them)."""
    tensors = {**_sae_tensors(), "threshold": torch.ones(N), "scaling_factor": torch.ones(N)}
    with pytest.raises(DictionaryLoadError, match="scaling_factor', 'threshold"):
        load_dictionary(_foreign_saelens(tmp_path / "d", tensors))


def test_transcoder_metadata_k_not_a_number(tmp_path):
    """A transcoder file whose header metadata says k='abc' (a ValueError traceback) →
    DictionaryLoadError naming k."""
    path = _transcoder_file(tmp_path / "t", metadata={"activation": "topk", "k": "abc"})
    with pytest.raises(DictionaryLoadError, match="'k'.*'abc'"):
        load_dictionary(path)


def test_config_yaml_invalid_utf8(tmp_path):
    """A transcoder's config.yaml holding invalid UTF-8 → DictionaryLoadError naming the file."""
    path = _transcoder_file(tmp_path / "t")
    (path.parent / "config.yaml").write_bytes(b"feature_input_hook: \xff\xfe\n")
    with pytest.raises(DictionaryLoadError, match="config.yaml.*UTF-8"):
        load_dictionary(path)


def test_dictionary_learning_other_class_refused(tmp_path):
    """A dictionary_learning folder whose config.json names another class (BatchTopKSAE, which
    encodes with a global threshold) but whose tensors look like AutoEncoderTopK's →
    DictionaryLoadError naming the class."""
    folder = _dictionary_learning(tmp_path / "dl", k=torch.tensor(4),
                                  threshold=torch.tensor(0.5))
    (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": "BatchTopKSAE",
                                                                "k": 4}}))
    with pytest.raises(DictionaryLoadError, match="BatchTopKSAE"):
        load_dictionary(folder)


def test_safetensors_header_nested_too_deep(tmp_path):
    """A transcoder file whose header is 100 000 nested JSON lists (a RecursionError in the
    JSON parser) → DictionaryLoadError, not a traceback."""
    raw = b"[" * 100_000 + b"]" * 100_000
    path = tmp_path / "layer_0.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(DictionaryLoadError, match="header is not JSON"):
        load_dictionary(path)


def test_dictionary_learning_boolean_must_be_json_boolean(tmp_path):
    """A JumpReluAutoEncoder whose config.json says apply_b_dec_to_input: "false" (read as
    True) → DictionaryLoadError naming config.json and the key."""
    folder = tmp_path / "dl"
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    torch.save({"W_enc": torch.randn(D, N, generator=generator), "b_enc": torch.zeros(N),
                "W_dec": torch.randn(N, D, generator=generator), "b_dec": torch.zeros(D),
                "threshold": torch.full((N,), 0.1)}, folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps({"trainer": {
        "dict_class": "JumpReluAutoEncoder", "apply_b_dec_to_input": "false"}}))
    with pytest.raises(DictionaryLoadError, match="config.json.*apply_b_dec_to_input"):
        load_dictionary(folder)
