"""A tiny Llama trained (seeded, ~1 minute on CPU) to answer kopt's gelu CPU prompt with known kernels.

Sampling it yields real, evaluable candidates: each completion is one of the hand-written examples in
examples/gelu/candidates_cpu/ inside a ```python fence, so the real evaluator judges them (one correct and
fast, one correct and slower, one that compiles but is wrong). The TTT tests then check that a GRPO step with
the evaluator's rewards moves probability mass between *known* kernels (issue 5, "Tests").

How it is made (teacher forcing on prompt + answer, loss on the answer only):
- the tokenizer is a byte-level BPE (vocabulary 1800) trained on the prompt and the answers as whole texts,
  without the usual split at spaces, so tokens span lines: the prompt is ~160 tokens and an answer 4-6
  long code chunks. After the answers part, no token is shared between them, so the model needs no
  long-range memory of which candidate it is writing (with 48-character tokens a 2-layer model kept
  mixing candidates after 400 steps). Training and sampling are short; vLLM's CPU backend runs it;
- the prompt ids are exactly what the samplers feed (`encode_prompt` on `build_prompt(task, "cpu")`), so the
  model answers kopt's own prompt; with no chat template it is the plain text after <s>;
- the answers share their first tokens and part of their body; where they part, the model learns the
  balanced choice (1/3 each, then 1/2 between the two "correct" ones); everywhere else the next token is
  fixed and training runs until the model gives it >= 98%, so samples are the candidates verbatim.

`trained_tiny_model_dir` is a session fixture: one model per test session, under pytest's base temp dir.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GELU = REPO / "examples" / "gelu"
# (file, what the evaluator says about it): a fast correct kernel, a slow correct one, a wrong one.
CANDIDATES = ("02_openmp.py", "01_naive_single_thread.py", "05_wrong_constant.py")
SEED = 0
STEPS = 240
LR = 1e-2
MEMORISED = 0.98


def gelu_prompt():
    from kopt.prompt import build_prompt
    from kopt.task import load_task

    return build_prompt(load_task(str(GELU / "task.py")), "cpu")


def answer_text(name: str) -> str:
    """The reply the model learns for candidate `name`: its code in one ```python fence."""
    code = (GELU / "candidates_cpu" / name).read_text(encoding="utf-8")
    return f"```python\n{code.rstrip()}\n```\n"


def make_tokenizer(texts: list[str], vocab_size: int = 1800, max_token_chars: int | None = None):
    """Byte-level BPE (every string encodes) whose merges may cross spaces and newlines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # use_regex=False: no split into words, so merges learn whole repeated code fragments.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
                                  max_token_length=max_token_chars)
    # Whole texts as training units: merges span lines, so each answer becomes a few long tokens and the
    # tokens after the first one are (nearly) unique to their candidate; the model then memorises them in
    # seconds instead of learning to track across many shared lines which candidate it is writing.
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   clean_up_tokenization_spaces=False)


def build(directory, steps: int = STEPS, seed: int = SEED) -> str:
    """Train and save the model + tokenizer in `directory` (deterministic for a given seed); return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kopt.samplers.base import encode_prompt

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    prompt = gelu_prompt()
    answers = [answer_text(n) for n in CANDIDATES]
    tok = make_tokenizer([prompt.as_text(), *answers])
    prompt_ids = encode_prompt(tok, prompt)
    answer_ids = [tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for a in answers]
    longest = len(prompt_ids) + max(len(a) for a in answer_ids)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32,  # vLLM CPU: head_dim >= 32
                      max_position_embeddings=max(512, 1 << (longest + 64).bit_length()),
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    n = len(prompt_ids)
    width = max(len(a) for a in answer_ids)
    ids = torch.full((len(answers), n + width), tok.pad_token_id)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, a in enumerate(answer_ids):
        ids[i, :n] = torch.tensor(prompt_ids)
        ids[i, n:n + len(a)] = torch.tensor(a)
        labels[i, n:n + len(a)] = torch.tensor(a)  # loss on the answer only
        mask[i, :n + len(a)] = 1
    # Positions whose next token is fixed by the prefix (not a choice between candidates): training stops
    # once the model puts >= MEMORISED on each of them, so sampling returns the candidates verbatim.
    fixed = torch.zeros_like(ids, dtype=torch.bool)
    for i, a in enumerate(answer_ids):
        for j in range(len(a)):
            nexts = {b[j] for b in answer_ids if len(b) > j and b[:j] == a[:j]}
            fixed[i, n + j] = len(nexts) == 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is as fast and does not fight the other tests
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    t0 = time.monotonic()
    losses = []
    model.train()
    try:
        for step in range(steps):
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            losses.append(out.loss.item())
            if step % 10 == 9:
                with torch.no_grad():
                    p = out.logits[:, :-1].float().softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
                if p[fixed[:, 1:]].min().item() >= MEMORISED:
                    break
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.generation_config.do_sample = False
    model.save_pretrained(d)
    tok.save_pretrained(d)
    (d / "kopt_training.json").write_text(json.dumps({
        "candidates": list(CANDIDATES), "steps": len(losses), "seed": seed, "lr": LR, "final_loss": losses[-1],
        "prompt_tokens": n, "answer_tokens": [len(a) for a in answer_ids], "train_s": time.monotonic() - t0,
    }, indent=1))
    return str(d)


@pytest.fixture(scope="session")
def trained_tiny_model_dir(tmp_path_factory) -> str:
    """The trained model, built once per test session."""
    d = tmp_path_factory.getbasetemp() / f"trained-tiny-gelu-seed{SEED}"
    if not (d / "config.json").exists():
        build(d)
    return str(d)


if __name__ == "__main__":  # python tests/trained_tiny.py DIR: build it by hand (e.g. for a CLI run)
    import sys

    print(build(sys.argv[1] if len(sys.argv) > 1 else "/tmp/kopt-trained-tiny"))
