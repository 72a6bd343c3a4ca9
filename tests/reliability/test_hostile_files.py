"""Hostile files: truncated, bit-flipped and wrong-typed inputs to every reader.

Each reader must either load correctly or raise a featcircuits error — never crash with a
foreign exception, hang, or load something different from what was saved.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featcircuits import FeatCircuitsError, load_dictionary, read_prompts, save_dictionary
from featcircuits.dictionaries import PCABasis, SparseAutoencoder

D, N = 8, 24
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _reference(kind: str):
    torch.manual_seed(0)
    if kind == "pca":
        return PCABasis.fit(torch.randn(100, D), site="resid_out.0")
    sae = SparseAutoencoder(D, N, activation=kind, k=3 if kind == "topk" else None,
                            site="resid_out.1")
    with torch.no_grad():
        sae.b_enc.normal_()
    return sae


def _same(a, b) -> bool:
    return type(a) is type(b) and a.site == b.site and all(
        torch.equal(a.state_dict()[key], b.state_dict()[key]) for key in a.state_dict())


def _load_or_project_error(folder, reference):
    """The outcome must be a project error or an identical dictionary."""
    try:
        loaded = load_dictionary(folder)
    except FeatCircuitsError:
        return "error"
    assert _same(loaded, reference), "a damaged file loaded as a different dictionary"
    return "loaded"


@pytest.mark.parametrize("kind", ["relu", "topk", "jumprelu", "pca"])
@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_native_dictionaries(tmp_path_factory, kind, data):
    """Saved ReLU/TopK/JumpReLU SAEs and PCA bases with cfg.json or the weights truncated,
    bit-flipped, replaced by garbage or emptied → a featcircuits error or the identical
    dictionary."""
    reference = _reference(kind)
    folder = tmp_path_factory.mktemp("dict")
    save_dictionary(reference, folder)
    target = folder / data.draw(st.sampled_from(["sae_weights.safetensors", "cfg.json"]))
    content = bytearray(target.read_bytes())
    damage = data.draw(st.sampled_from(["truncate", "flip", "garbage", "empty"]))
    if damage == "truncate":
        content = content[: data.draw(st.integers(0, len(content) - 1))]
    elif damage == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            index = data.draw(st.integers(0, len(content) - 1))
            content[index] ^= 1 << data.draw(st.integers(0, 7))
    elif damage == "garbage":
        content = bytearray(data.draw(st.binary(min_size=1, max_size=200)))
    else:
        content = bytearray()
    target.write_bytes(bytes(content))
    _load_or_project_error(folder, reference)


WRONG_TYPES = [None, "12", 3.5, -4, 0, True, [], {}, "relu", 10**12]


@pytest.mark.parametrize("key", ["d_in", "d_sae", "architecture", "apply_b_dec_to_input",
                                 "hook_name", "activation_fn_kwargs", "featcircuits"])
@pytest.mark.parametrize("value", WRONG_TYPES)
def test_wrong_typed_config_values(tmp_path, key, value):
    """cfg.json fields (d_in, d_sae, architecture, ...) set to None, strings, floats,
    negatives, lists, dicts, 10**12 → a featcircuits error or the identical dictionary."""
    reference = _reference("topk")
    save_dictionary(reference, tmp_path / "d")
    cfg_path = tmp_path / "d" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg[key] = value
    cfg.get("featcircuits", {}).pop("sha256", None) if isinstance(cfg.get("featcircuits"),
                                                                   dict) else None
    cfg_path.write_text(json.dumps(cfg))
    _load_or_project_error(tmp_path / "d", reference)


def test_foreign_saelens_without_checksum_wrong_types(tmp_path):
    """SAELens folders (no checksum) with d_sae of a wrong type or value → a featcircuits
    error."""
    reference = _reference("relu")
    for value in WRONG_TYPES:
        save_dictionary(reference, tmp_path / "d")
        cfg_path = tmp_path / "d" / "cfg.json"
        cfg = json.loads(cfg_path.read_text())
        del cfg["featcircuits"]
        cfg["d_sae"] = value
        cfg_path.write_text(json.dumps(cfg))
        if value == N:
            continue
        with pytest.raises(FeatCircuitsError):
            load_dictionary(tmp_path / "d")


def test_dictionary_learning_pickle_is_never_executed(tmp_path):
    """A dictionary_learning ae.pt holding a pickle that runs code → DictionaryLoadError
    (weights_only=True), the code never runs."""
    class Exploit:
        def __reduce__(self):
            return (exec, ("open({!r}, 'w').write('pwned')".format(str(tmp_path / "pwned")),))

    folder = tmp_path / "ae"
    folder.mkdir()
    torch.save({"payload": Exploit()}, folder / "ae.pt")
    with pytest.raises(FeatCircuitsError):
        load_dictionary(folder)
    assert not (tmp_path / "pwned").exists()


PROMPT_ROWS = [
    {"clean": "When Mary and John went", "corrupt": "When Kate and John went",
     "answer": "Mary", "wrong_answer": "John"},
    {"clean": "a ( b", "corrupt": "a [ b", "answer": ")", "wrong_answer": "]"},
]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".json"])
@FUZZ
@given(data=st.data())
def test_damaged_prompt_files(tmp_path_factory, suffix, data):
    """JSONL/CSV/auto-circuit JSON prompt files truncated, bit-flipped or garbage → a
    featcircuits error or rows of non-empty strings."""
    folder = tmp_path_factory.mktemp("prompts")
    path = folder / f"p{suffix}"
    if suffix == ".jsonl":
        text = "\n".join(json.dumps(row) for row in PROMPT_ROWS)
    elif suffix == ".csv":
        text = "clean,corrupt,answer,wrong_answer\n" + "\n".join(
            ",".join(row.values()) for row in PROMPT_ROWS)
    else:
        text = json.dumps({"prompts": [{"clean": r["clean"], "corrupt": r["corrupt"],
                                        "answers": [r["answer"]],
                                        "wrong_answers": [r["wrong_answer"]]}
                                       for r in PROMPT_ROWS]})
    content = bytearray(text.encode())
    rng = random.Random(data.draw(st.integers(0, 2**32 - 1)))
    damage = data.draw(st.sampled_from(["truncate", "flip", "garbage"]))
    if damage == "truncate":
        content = content[: rng.randrange(len(content))]
    elif damage == "flip":
        for _ in range(rng.randint(1, 4)):
            content[rng.randrange(len(content))] ^= 1 << rng.randrange(8)
    else:
        content = bytearray(data.draw(st.binary(max_size=300)))
    path.write_bytes(bytes(content))
    try:
        frame = read_prompts(path)
    except FeatCircuitsError:
        return
    for column in ("clean", "corrupt", "answer", "wrong_answer"):
        assert frame[column].map(lambda v: isinstance(v, str) and v.strip() != "").all()


def test_mangled_section_name_is_not_read_as_a_foreign_sae(tmp_path):
    """A bit flip in the key 'featcircuits' of a PCA basis's cfg.json (found by the fuzzer:
    it once loaded as a SAELens ReLU SAE) → DictionaryLoadError."""
    reference = _reference("pca")
    save_dictionary(reference, tmp_path / "d")
    cfg_path = tmp_path / "d" / "cfg.json"
    cfg_path.write_text(cfg_path.read_text().replace('"featcircuits"', '"featcircuit3"'))
    with pytest.raises(FeatCircuitsError, match="no 'featcircuits' section"):
        load_dictionary(tmp_path / "d")
