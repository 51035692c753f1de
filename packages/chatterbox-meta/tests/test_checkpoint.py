"""make_random_checkpoint: the five Hub files in the real layout, conds.pt made by really
preparing a synthetic voice with the freshly written random models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from chatterbox_vllm.checkpoint import make_random_checkpoint
from chatterbox_vllm.conds import VoiceConditionals
from chatterbox_vllm.hub import CHECKPOINT_FILES

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[3]
MANIFESTS = {
    "ve.safetensors": REPO / "packages/t3-vllm/tests/data/ve.json",
    "t3_cfg.safetensors": REPO / "packages/t3-vllm/tests/data/t3_cfg.json",
    "s3gen.safetensors": REPO / "packages/s3gen/tests/data/s3gen.json",
}
SAFETENSORS_DTYPES = {"F32": "float32", "I64": "int64", "F16": "float16", "BF16": "bfloat16"}
LAYOUT = json.loads((DATA / "conds_layout.json").read_text())


def check_conds_layout(conds: dict) -> None:
    """Same keys, None entries, dtypes and shapes as the reference's conds.pt (a 3 s voice: 75
    tokens, 150 mel frames), and an L2-normalised speaker embedding."""
    assert set(conds) == {"t3", "gen"}
    for group in ("t3", "gen"):
        assert set(conds[group]) == set(LAYOUT[group]), group
        for key, spec in LAYOUT[group].items():
            value = conds[group][key]
            if spec == "None":
                assert value is None, f"{group}.{key}"
            else:
                assert isinstance(value, torch.Tensor), f"{group}.{key}"
                assert list(value.shape) == spec["shape"], f"{group}.{key}"
                assert str(value.dtype) == f"torch.{spec['dtype']}", f"{group}.{key}"
    embedding = conds["t3"]["speaker_emb"]
    assert float(embedding.norm()) == pytest.approx(LAYOUT["ve_embedding_norm"], abs=1e-5)
    assert float(embedding.min()) >= LAYOUT["ve_embedding_min"]  # ReLU before the norm
    assert conds["gen"]["prompt_token_len"].tolist() == [conds["gen"]["prompt_token"].shape[1]]
    assert float(conds["t3"]["emotion_adv"]) == 0.5


def test_tiny_checkpoint_is_complete_and_deterministic(tmp_path: Path) -> None:
    first = make_random_checkpoint(tmp_path / "a", "tiny", seed=0)
    for name in CHECKPOINT_FILES:
        assert (first / name).is_file(), name
    check_conds_layout(torch.load(first / "conds.pt", weights_only=True))
    second = make_random_checkpoint(tmp_path / "b", "tiny", seed=0)
    # Same seed, same tensors (safetensors' metadata order is not stable, so compare tensors).
    for name in ("ve.safetensors", "t3_cfg.safetensors", "s3gen.safetensors"):
        a, b = load_file(first / name), load_file(second / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    a_conds, b_conds = (torch.load(d / "conds.pt", weights_only=True) for d in (first, second))
    for group in ("t3", "gen"):
        for key, value in a_conds[group].items():
            assert value is None or torch.equal(value, b_conds[group][key]), f"{group}.{key}"
    other = make_random_checkpoint(tmp_path / "c", "tiny", seed=1)
    t3_first = load_file(first / "t3_cfg.safetensors")
    t3_other = load_file(other / "t3_cfg.safetensors")
    assert not all(torch.equal(t3_first[k], t3_other[k]) for k in t3_first)


def test_bad_size_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size must be 'tiny' or 'full'"):
        make_random_checkpoint(tmp_path, "medium")  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def full_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ~3.4 GB real-layout checkpoint, written once per session."""
    return make_random_checkpoint(tmp_path_factory.mktemp("full-checkpoint"), "full", seed=0)


@pytest.mark.slow
def test_full_checkpoint_matches_the_real_layout_file_by_file(full_checkpoint: Path) -> None:
    assert not (full_checkpoint / "t3_config.json").exists()
    assert not (full_checkpoint / "s3gen_config.json").exists()
    for filename, manifest_path in MANIFESTS.items():
        manifest = json.loads(manifest_path.read_text())
        with safe_open(str(full_checkpoint / filename), framework="pt") as handle:
            names = set(handle.keys())
            assert names == set(manifest), (
                f"{filename}: missing {sorted(set(manifest) - names)[:5]}, "
                f"unexpected {sorted(names - set(manifest))[:5]}"
            )
            for name, spec in manifest.items():
                tensor_slice = handle.get_slice(name)
                assert list(tensor_slice.get_shape()) == spec["shape"], f"{filename}:{name}"
                assert SAFETENSORS_DTYPES[tensor_slice.get_dtype()] == spec["dtype"], name
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(full_checkpoint / "tokenizer.json")).get_vocab()
    assert len(vocab) == 704
    assert (vocab["[STOP]"], vocab["[UNK]"], vocab["[SPACE]"], vocab["[START]"]) == (0, 1, 2, 255)
    conds = torch.load(full_checkpoint / "conds.pt", weights_only=True)
    check_conds_layout(conds)
    VoiceConditionals.from_dict(conds)  # and our own reader accepts it
