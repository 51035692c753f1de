"""The multilingual model in the product, without an engine: which model a checkpoint holds, its
files and download, the ``language`` control (CLI, Python, per-model checks), per-model
defaults, and text splitting for languages written without spaces."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import huggingface_hub.constants
import pytest

from chatterbox_vllm.cli import build_parser, main
from chatterbox_vllm.config import EngineConfig
from chatterbox_vllm.controls import CONTROLS, GenerationParams, controls_from_namespace
from chatterbox_vllm.errors import CheckpointError, InvalidParameterError
from chatterbox_vllm.hub import DEFAULT_REPO_ID, download_checkpoint, inspect_checkpoint_dir
from chatterbox_vllm.models import detect_model
from chatterbox_vllm.planner import expected_speech_seconds, plan_requests
from chatterbox_vllm.text import split_text

# Written out here, not read from the code under test: chatterbox-tts 0.1.7's 23 language ids and
# its ChatterboxMultilingualTTS files and generate() defaults.
LANGUAGES = "ar da de el en es fi fr he hi it ja ko ms nl no pl pt ru sv sw tr zh".split()
ENGLISH_FILES = ["ve.safetensors", "t3_cfg.safetensors", "s3gen.safetensors", "tokenizer.json",
                 "conds.pt"]  # fmt: skip
MULTILINGUAL_FILES = ["ve.pt", "t3_mtl23ls_v2.safetensors", "s3gen.pt",
                      "grapheme_mtl_merged_expanded_v1.json", "Cangjie5_TC.json", "conds.pt"]  # fmt: skip
MULTILINGUAL_DEFAULTS = {"exaggeration": 0.5, "cfg_weight": 0.5, "temperature": 0.8,
                         "repetition_penalty": 2.0, "min_p": 0.05, "top_p": 1.0}  # fmt: skip
ENGLISH_DEFAULTS = {"exaggeration": 0.5, "cfg_weight": 0.5, "temperature": 0.8,
                    "repetition_penalty": 1.2, "min_p": 0.05, "top_p": 1.0}  # fmt: skip


def _fake_checkpoint(directory: Path, files: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in files:
        (directory / name).write_bytes(b"x")
    return directory


# ------------------------------------------------------------------ which model, which files


def test_the_model_is_detected_from_the_t3_file(tmp_path: Path) -> None:
    english = _fake_checkpoint(tmp_path / "en", ENGLISH_FILES)
    multilingual = _fake_checkpoint(tmp_path / "mtl", MULTILINGUAL_FILES)
    assert detect_model(english) == "english"
    assert detect_model(multilingual) == "multilingual"
    assert inspect_checkpoint_dir(multilingual, require_conds=True) == (
        multilingual,
        "multilingual",
    )
    with pytest.raises(CheckpointError, match=r"t3_cfg\.safetensors .*or t3_mtl23ls_v2"):
        detect_model(_fake_checkpoint(tmp_path / "none", ["s3gen.pt", "ve.pt"]))
    both = _fake_checkpoint(tmp_path / "both", [*ENGLISH_FILES, "t3_mtl23ls_v2.safetensors"])
    with pytest.raises(CheckpointError, match="holds both .*keep one model per"):
        detect_model(both)


def test_a_multilingual_checkpoint_missing_files_names_them(tmp_path: Path) -> None:
    directory = _fake_checkpoint(
        tmp_path, [f for f in MULTILINGUAL_FILES if f not in ("s3gen.pt", "Cangjie5_TC.json")]
    )
    with pytest.raises(CheckpointError) as info:
        inspect_checkpoint_dir(directory)
    message = str(info.value)
    assert "(multilingual model) is missing s3gen.pt: S3Gen weights" in message
    assert "Cangjie5_TC.json: Cangjie codes" in message
    (directory / "conds.pt").unlink()
    _fake_checkpoint(directory, ["s3gen.pt", "Cangjie5_TC.json"])
    assert inspect_checkpoint_dir(directory)[1] == "multilingual"  # conds.pt optional locally


def test_the_multilingual_download_fetches_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_cache: Callable[..., Path]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    files = {name: name.encode() for name in MULTILINGUAL_FILES}
    # The multilingual model follows main (its revision default); the cache resolves the branch.
    snapshot = hub_cache(tmp_path, DEFAULT_REPO_ID, "a" * 40, files, ref="main")
    found = download_checkpoint(cache_dir=tmp_path, model="multilingual")
    assert found == snapshot
    assert sorted(p.name for p in found.iterdir()) == sorted(MULTILINGUAL_FILES)
    # The English download of the same snapshot is told which model it got.
    with pytest.raises(CheckpointError, match="gave the multilingual model's files"):
        download_checkpoint(revision="main", cache_dir=tmp_path, model="english")
    with pytest.raises(InvalidParameterError, match="model must be one of english, multilingual"):
        download_checkpoint(cache_dir=tmp_path, model="german")  # type: ignore[arg-type]


# ------------------------------------------------------------------ the language control


def test_language_is_one_control_of_the_contract() -> None:
    assert CONTROLS["language"].choices == tuple(LANGUAGES)
    args = build_parser().parse_args(["speak", "Bonjour.", "--language", "fr"])
    assert controls_from_namespace(args) == {"language": "fr"}
    assert GenerationParams(language="FR").language == "fr"
    assert GenerationParams().language is None


@pytest.mark.parametrize("bad", ["xx", "french", "", 3])
def test_an_unknown_language_lists_the_23(bad: object) -> None:
    with pytest.raises(InvalidParameterError) as info:
        GenerationParams(language=bad)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith("language must be one of " + ", ".join(LANGUAGES))
    assert repr(bad) in message


def test_the_english_model_speaks_only_english() -> None:
    assert GenerationParams.from_controls({"language": "en"}).language == "en"
    with pytest.raises(InvalidParameterError, match=r"'de' \(German\) needs the multilingual"):
        GenerationParams.from_controls({"language": "de"}, model="english")
    assert GenerationParams.for_model("multilingual", language="de").language == "de"
    # A plan checks params built elsewhere against the engine's model too.
    with pytest.raises(InvalidParameterError, match="needs the multilingual model"):
        plan_requests(["Hallo."], [GenerationParams(language="de")], EngineConfig(), "english")


def test_cli_rejects_a_language_before_loading(tmp_path: Path, capsys) -> None:
    english = _fake_checkpoint(tmp_path / "en", ENGLISH_FILES)  # not loadable: must not be loaded
    out = tmp_path / "x.wav"
    assert main(["speak", "Hola.", "--language", "es", "--model-dir", str(english),
                 "--out", str(out)]) == 1  # fmt: skip
    assert "needs the multilingual model" in capsys.readouterr().err
    assert main(["speak", "Hola.", "--language", "xx", "--out", str(out)]) == 1
    assert "language must be one of ar, da" in capsys.readouterr().err
    multilingual = _fake_checkpoint(tmp_path / "mtl", MULTILINGUAL_FILES)
    assert main(["speak", "Hola.", "--model", "english", "--model-dir", str(multilingual),
                 "--out", str(out)]) == 1  # fmt: skip
    assert "holds the multilingual model" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------ per-model defaults


def test_unset_controls_take_the_models_defaults() -> None:
    def sampling(params: GenerationParams) -> dict[str, float]:
        return {name: getattr(params, name) for name in MULTILINGUAL_DEFAULTS}

    assert sampling(GenerationParams.for_model("multilingual")) == MULTILINGUAL_DEFAULTS
    assert sampling(GenerationParams.from_controls({}, model="english")) == ENGLISH_DEFAULTS
    assert sampling(GenerationParams()) == ENGLISH_DEFAULTS
    chosen = GenerationParams.for_model("multilingual", repetition_penalty=1.3, temperature=0.5)
    assert (chosen.repetition_penalty, chosen.temperature, chosen.min_p) == (1.3, 0.5, 0.05)
    assert "2 on the multilingual model" in CONTROLS["repetition_penalty"].describe()


# ------------------------------------------------------------------ splitting


def test_chinese_is_split_at_its_sentence_ends_without_spaces() -> None:
    sentences = ["今天天气很好。", "我们去公园散步吧！", "你觉得怎么样？", "我的朋友明天要去北京。"]
    text = "".join(sentences * 4)
    chunks = split_text(text, 60, fold=False)
    assert len(chunks) > 1
    assert "".join(chunks) == text  # nothing lost, no space added between CJK sentences
    for chunk in chunks:
        assert chunk[-1] in "。！？"  # whole sentences
        assert 3 * len(chunk) <= 60  # each ideograph weighs three characters of speech


def test_japanese_clauses_and_unpunctuated_runs_fit_the_budget() -> None:
    text = "これはとても長い文章ですが、句読点は読点しかありません、" * 4 + "あ" * 50
    chunks = split_text(text, 60, fold=False)
    assert "".join(chunks) == text
    assert all(3 * len(chunk) <= 60 for chunk in chunks)
    assert chunks[0].endswith("、")  # cut after the clause mark, not inside it


def test_cjk_speech_takes_longer_than_its_character_count() -> None:
    assert expected_speech_seconds("你好" * 15) == pytest.approx(6.0)  # 30 ideographs, ~5/s
    assert expected_speech_seconds("a" * 30) == pytest.approx(2.0)


def test_accents_are_kept_for_the_multilingual_model() -> None:
    text = "Où est la gare ? Ça va très bien. " * 20
    params = GenerationParams.for_model("multilingual", language="fr")
    plan = plan_requests([text], [params], EngineConfig(max_chunk_chars=100), "multilingual")
    assert "Où" in plan.items[0].text and "très" in plan.items[0].text
    english = plan_requests(
        [text], [GenerationParams()], EngineConfig(max_chunk_chars=100), "english"
    )
    assert "Ou est" in english.items[0].text  # the English tokenizer has no accented letters
