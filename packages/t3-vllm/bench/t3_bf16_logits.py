"""How far T3's bf16 logits are from float32, teacher-forced (needs chatterbox-tts 0.1.2).

bf16 greedy decoding of random weights leaves the float32 path after a dozen or so tokens, which
says little by itself: each step only needs one near-tie to pick another token, and from then on
the two runs see different inputs. Teacher forcing removes that: both precisions read the same
sequence (the float32 greedy tokens, CFG on), and their CFG-mixed speech logits are compared
position by position: relative error, argmax agreement, and the float32 top-1/top-2 margin where
the argmaxes first disagree (a near-tie if it is small against the bf16 error).

Runs the reference implementation's T3 (HF Llama) in PyTorch, the model vLLM serves here, so it
measures the model's own sensitivity to bf16, not vLLM's kernels.

    python bench/t3_bf16_logits.py --random full --tokens 100 [--device cuda]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

TEXT = "The quick brown fox jumps over the lazy dog, and then it runs back home again."


def _reference_t3(checkpoint: Path, device: str) -> Any:
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS
    from chatterbox.models.t3.modules.t3_config import T3Config as ReferenceConfig
    from safetensors.torch import load_file

    from chatterbox_t3 import T3Config

    config = T3Config.from_checkpoint_dir(checkpoint)
    hp = ReferenceConfig()
    if config.num_hidden_layers != 30 or config.intermediate_size != 4096:
        LLAMA_CONFIGS["bench"] = {
            **LLAMA_CONFIGS["Llama_520M"],
            "num_hidden_layers": config.num_hidden_layers,
            "intermediate_size": config.intermediate_size,
        }
        hp.llama_config_name = "bench"
    t3 = T3(hp)
    t3.load_state_dict(load_file(checkpoint / "t3_cfg.safetensors"))
    return t3.to(device).eval()


@torch.inference_mode()
def _teacher_forced_logits(
    t3: Any, cond: Any, text: torch.Tensor, tokens: list[int], cfg_weight: float
) -> torch.Tensor:
    """CFG-mixed speech logits ``[len(tokens), vocab]``: row i predicts ``tokens[i]``, laid out as
    the reference's ``inference`` lays its sequence out (two BOS at speech position 0, generated
    token i at position i)."""
    device = t3.device
    bos = torch.full((2, 1), t3.hp.start_speech_token, dtype=torch.long, device=device)
    embeds, _ = t3.prepare_input_embeds(
        t3_cond=cond, text_tokens=text, speech_tokens=bos, cfg_weight=cfg_weight
    )
    bos_embed = t3.speech_emb(bos) + t3.speech_pos_emb.get_fixed_embedding(0)
    ids = torch.tensor(tokens[:-1], dtype=torch.long, device=device)
    positions = torch.stack(
        [t3.speech_pos_emb.get_fixed_embedding(i + 1)[0, 0] for i in range(len(ids))]
    )
    generated = (t3.speech_emb(ids) + positions).unsqueeze(0).expand(2, -1, -1)
    sequence = torch.cat([embeds, bos_embed, generated], dim=1)
    hidden = t3.tfmr(inputs_embeds=sequence, use_cache=False).last_hidden_state
    logits = t3.speech_head(hidden[:, -len(tokens) :]).float()
    cond_logits, uncond_logits = logits[0], logits[1]
    return cond_logits + cfg_weight * (cond_logits - uncond_logits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path)
    source.add_argument("--random", choices=["tiny", "full"])
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--cfg-weight", type=float, default=0.5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    import torch.nn.functional as F
    from chatterbox.models.t3.modules.cond_enc import T3Cond
    from chatterbox.models.tokenizers import EnTokenizer
    from chatterbox.tts import punc_norm

    from chatterbox_t3 import T3Voice, write_random_t3_checkpoint

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.checkpoint or write_random_t3_checkpoint(
            Path(scratch) / "ckpt", args.random, seed=0
        )
        t3 = _reference_t3(checkpoint, args.device)
        tokenizer = EnTokenizer(str(checkpoint / "tokenizer.json"))
    generator = torch.Generator().manual_seed(0)
    voice = T3Voice(
        F.normalize(torch.randn(256, generator=generator), dim=0),
        torch.randint(0, 6561, (150,), generator=generator),
    )
    text = tokenizer.text_to_tokens(punc_norm(TEXT)).to(args.device)
    text = F.pad(F.pad(torch.cat([text, text]), (1, 0), value=255), (0, 1), value=0)

    def cond(dtype: torch.dtype = torch.float32) -> Any:
        return T3Cond(
            speaker_emb=voice.speaker_embedding[None].to(args.device, dtype),
            cond_prompt_speech_tokens=voice.prompt_tokens[None].to(args.device),
            emotion_adv=0.5 * torch.ones(1, 1, 1, device=args.device, dtype=dtype),
        )

    # float32 greedy path: min_p=1 keeps only the most likely token; no repetition penalty, so
    # each token is the argmax of the CFG logits that teacher forcing recomputes below.
    with torch.inference_mode():
        out = t3.inference(
            t3_cond=cond(),
            text_tokens=text,
            max_new_tokens=args.tokens,
            cfg_weight=args.cfg_weight,
            min_p=1.0,
            repetition_penalty=1.0,
            stop_on_eos=False,
        )
    tokens = [int(t) for t in out.reshape(-1).tolist()][: args.tokens]
    reference = _teacher_forced_logits(t3, cond(), text, tokens, args.cfg_weight)
    t3.to(torch.bfloat16)
    low = _teacher_forced_logits(t3, cond(torch.bfloat16), text, tokens, args.cfg_weight)

    diff = (low - reference).norm(dim=-1) / reference.norm(dim=-1)
    agree = (low.argmax(-1) == reference.argmax(-1)).tolist()
    top2 = reference.topk(2, dim=-1).values
    margin = (top2[:, 0] - top2[:, 1]) / reference.std(dim=-1)
    fp32_self = sum(int(a == b) for a, b in zip(reference.argmax(-1).tolist(), tokens))
    first = agree.index(False) if False in agree else None
    print(f"device {args.device}, {len(tokens)} teacher-forced positions, CFG {args.cfg_weight}")
    print(f"float32 teacher-forced argmax == float32 greedy token: {fp32_self}/{len(tokens)}")
    print(
        f"bf16 vs float32 logits: relative L2 error median {diff.median():.2e}, "
        f"max {diff.max():.2e}; max |diff| {(low - reference).abs().max():.3f} "
        f"(logit std {reference.std():.3f})"
    )
    print(f"argmax agreement: {sum(agree)}/{len(agree)}; first disagreement at position {first}")
    if first is not None:
        print(
            f"float32 top-1/top-2 margin there: {margin[first]:.3f} logit std "
            f"(median margin {margin.median():.3f})"
        )


if __name__ == "__main__":
    main()
