"""The CUDA-graph mode resolution (pure functions; no GPU, no engine)."""

from __future__ import annotations

import pytest

from chatterbox_t3.cuda_graphs import (
    CUDA_GRAPH_MODES,
    GraphEnvironment,
    capture_sizes,
    check_mode,
    full_graph_support,
    resolve_cuda_graphs,
)

HOPPER_FA3 = GraphEnvironment("cuda", None, "bfloat16", (9, 0), 3)
AMPERE_FA2 = GraphEnvironment("cuda", None, "bfloat16", (8, 0), 2)
HARNESS = GraphEnvironment("cuda", "TRITON_ATTN_VLLM_V1", "float32", (9, 0), None)
CPU = GraphEnvironment("cpu", dtype="float32")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (HOPPER_FA3, "full"),
        (AMPERE_FA2, "piecewise"),
        (HARNESS, "full"),
        # vLLM 0.9.2 serves float32 with FlexAttention unless told otherwise.
        (GraphEnvironment("cuda", None, "float32", (9, 0), 3), "piecewise"),
        # Hopper without FA3 kernels falls back to FA2.
        (GraphEnvironment("cuda", None, "bfloat16", (9, 0), 2), "piecewise"),
        (GraphEnvironment("cuda", "FLASH_ATTN", "bfloat16", (9, 0), 3), "full"),
        (GraphEnvironment("cuda", "FLASHINFER", "bfloat16", (9, 0), 3), "piecewise"),
        (GraphEnvironment("cuda", None, "bfloat16", (10, 0), 2), "piecewise"),
        (GraphEnvironment("cuda", None, "float16", (7, 5), None), "piecewise"),
        (CPU, "off"),
    ],
)
def test_auto_picks_full_graphs_only_where_the_backend_supports_them(env, expected) -> None:
    plan = resolve_cuda_graphs("auto", env, max_num_seqs=64)
    assert plan.mode == expected
    assert plan.requested == "auto"
    assert plan.reason
    if expected == "off":
        assert plan.capture_sizes == ()


def test_explicit_modes_on_cuda() -> None:
    assert resolve_cuda_graphs("full", HOPPER_FA3, max_num_seqs=8).mode == "full"
    assert resolve_cuda_graphs("piecewise", HOPPER_FA3, max_num_seqs=8).mode == "piecewise"
    assert resolve_cuda_graphs("off", HOPPER_FA3, max_num_seqs=8).mode == "off"
    with pytest.raises(ValueError, match="FlashAttention 2 has no full-graph support"):
        resolve_cuda_graphs("full", AMPERE_FA2, max_num_seqs=8)
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        resolve_cuda_graphs("full", CPU, max_num_seqs=8)


def test_the_multilingual_model_runs_piecewise_graphs() -> None:
    """Its alignment stop is verified under piecewise graphs only: auto picks them, and an
    explicit request for full graphs is refused with the reason."""
    from dataclasses import replace

    multilingual = replace(HOPPER_FA3, alignment_stop=True)
    assert resolve_cuda_graphs("auto", multilingual, max_num_seqs=8).mode == "piecewise"
    assert resolve_cuda_graphs("piecewise", multilingual, max_num_seqs=8).mode == "piecewise"
    with pytest.raises(ValueError, match="multilingual alignment stop.*MULTILINGUAL_FULL_GRAPHS"):
        resolve_cuda_graphs("full", multilingual, max_num_seqs=8)


def test_the_switch_lets_the_multilingual_model_run_full_graphs() -> None:
    from dataclasses import replace

    switched = replace(HOPPER_FA3, alignment_stop=True, multilingual_full_graphs=True)
    assert resolve_cuda_graphs("full", switched, max_num_seqs=8).mode == "full"
    assert resolve_cuda_graphs("auto", switched, max_num_seqs=8).mode == "full"
    # Without a backend that can be captured whole the switch changes nothing.
    fa2 = replace(AMPERE_FA2, alignment_stop=True, multilingual_full_graphs=True)
    assert resolve_cuda_graphs("auto", fa2, max_num_seqs=8).mode == "piecewise"


@pytest.mark.parametrize("bad", ["Full", "eager", "", None, True, 1])
def test_bad_mode_names_the_accepted_values(bad) -> None:
    with pytest.raises(ValueError, match="'auto', 'full', 'piecewise', 'off'"):
        check_mode(bad)
    with pytest.raises(ValueError, match="cuda_graphs must be one of"):
        resolve_cuda_graphs(bad, HOPPER_FA3, max_num_seqs=8)


def test_enforce_eager_is_an_alias_of_off() -> None:
    plan = resolve_cuda_graphs("auto", HOPPER_FA3, max_num_seqs=8, enforce_eager=True)
    assert plan.mode == "off"
    assert plan.vllm_arguments() == {"enforce_eager": True}
    with pytest.raises(ValueError, match="pass only one of them"):
        resolve_cuda_graphs("full", HOPPER_FA3, max_num_seqs=8, enforce_eager=True)
    # enforce_eager=False keeps the mode on CUDA and means "compile" on CPU (vLLM's Dynamo path).
    assert resolve_cuda_graphs("auto", HOPPER_FA3, max_num_seqs=8, enforce_eager=False).mode == (
        "full"
    )
    cpu = resolve_cuda_graphs("auto", CPU, max_num_seqs=8, enforce_eager=False)
    assert cpu.compile_only
    assert cpu.vllm_arguments() == {"enforce_eager": False}
    assert resolve_cuda_graphs("piecewise", CPU, max_num_seqs=8).compile_only
    with pytest.raises(ValueError, match="enforce_eager must be a bool"):
        resolve_cuda_graphs("auto", CPU, max_num_seqs=8, enforce_eager="no")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("max_num_seqs", "sizes"),
    [
        (1, (1,)),
        (3, (1, 2, 4)),
        (8, (1, 2, 4, 8)),
        (20, (1, 2, 4, 8, 16, 24)),
        (64, (1, 2, 4, *range(8, 65, 8))),
        (65, (1, 2, 4, *range(8, 73, 8))),
    ],
)
def test_capture_sizes_cover_max_num_seqs(max_num_seqs, sizes) -> None:
    assert capture_sizes(max_num_seqs) == sizes
    assert max(capture_sizes(max_num_seqs)) >= max_num_seqs


def test_capture_sizes_respect_the_token_budget() -> None:
    assert capture_sizes(64, max_num_batched_tokens=20) == (1, 2, 4, 8, 16)
    with pytest.raises(ValueError):
        capture_sizes(0)


def test_vllm_arguments_are_a_compilation_config_object() -> None:
    from vllm.config import CompilationConfig

    full = resolve_cuda_graphs("auto", HOPPER_FA3, max_num_seqs=20).vllm_arguments()
    assert full["enforce_eager"] is False
    config = full["compilation_config"]
    # An object: a dict would be str()-ed and rejected on the AsyncEngineArgs path.
    assert isinstance(config, CompilationConfig)
    assert config.full_cuda_graph is True
    assert config.cudagraph_capture_sizes == [1, 2, 4, 8, 16, 24]
    piecewise = resolve_cuda_graphs("auto", AMPERE_FA2, max_num_seqs=4).vllm_arguments()
    assert piecewise["compilation_config"].full_cuda_graph is False
    assert piecewise["compilation_config"].cudagraph_capture_sizes == [1, 2, 4]


def test_user_compilation_config_is_kept_and_completed() -> None:
    from vllm.config import CompilationConfig

    plan = resolve_cuda_graphs("full", HOPPER_FA3, max_num_seqs=8)
    merged = plan.vllm_arguments({"cudagraph_capture_sizes": [1, 8], "level": 3})
    assert isinstance(merged["compilation_config"], CompilationConfig)
    assert merged["compilation_config"].cudagraph_capture_sizes == [1, 8]
    assert merged["compilation_config"].full_cuda_graph is True
    own = CompilationConfig(level=3)
    assert plan.vllm_arguments(own)["compilation_config"] is own
    assert own.full_cuda_graph is True and own.cudagraph_capture_sizes == [1, 2, 4, 8]
    with pytest.raises(TypeError, match="compilation_config must be"):
        plan.vllm_arguments("full")


def test_async_engine_args_accept_the_plan() -> None:
    """The path the issue hit: AsyncEngineArgs(**arguments) with a graph mode."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    arguments = resolve_cuda_graphs("full", HOPPER_FA3, max_num_seqs=8).vllm_arguments()
    engine_args = AsyncEngineArgs(model="unused", **arguments)
    assert engine_args.compilation_config.full_cuda_graph is True
    # What a plain dict does on that path (why the plan never hands one over).
    with pytest.raises(Exception):  # noqa: B017 - pydantic's ValidationError
        AsyncEngineArgs(model="unused", compilation_config={"full_cuda_graph": True})


def test_full_graph_support_reasons_name_the_backend() -> None:
    assert full_graph_support(HARNESS) == (
        True,
        "Triton attention (VLLM_ATTENTION_BACKEND) supports full graphs",
    )
    supported, why = full_graph_support(GraphEnvironment("cuda", "FLEX_ATTENTION"))
    assert not supported and "FLEX_ATTENTION" in why
    assert set(CUDA_GRAPH_MODES) == {"auto", "full", "piecewise", "off"}


def test_engines_reject_a_bad_mode_before_loading(tiny_checkpoint) -> None:
    """Both engines validate ``cuda_graphs`` first (no vLLM start, no model directory)."""
    from chatterbox_t3 import AsyncT3Engine, T3Engine

    for engine in (T3Engine, AsyncT3Engine):
        with pytest.raises(ValueError, match="cuda_graphs must be one of 'auto', 'full'"):
            engine.from_checkpoint(tiny_checkpoint, cuda_graphs="fast")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            engine.from_checkpoint(tiny_checkpoint, cuda_graphs="full", dtype="float32")
