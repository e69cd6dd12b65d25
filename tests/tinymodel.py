"""A tiny random Llama with a hand-made tokenizer, built in seconds with no network (tests only).

vLLM's CPU attention backend accepts head sizes 32, 64, 80, ... only, so head_dim is 32.
The pieces are separate functions so a test that trains such a model to
emit known kernels can reuse the tokenizer and config:

    tok = make_tokenizer()                    # byte-level BPE trained in memory on code text
    cfg = tiny_config(tok)                    # LlamaConfig sized for the tokenizer
    make_tiny_model(dir, seed=0)              # both, random weights, save_pretrained -> str(dir)

`tiny_model_dir` is a pytest fixture: the model is built once per test session under pytest's base temp
directory and shared by every module that imports the fixture.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# A small chat template (Jinja) for tests that exercise the chat path; the model is not trained on it.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_CORPUS = [
    "import torch\nimport torch.nn as nn\nfrom torch.utils.cpp_extension import load_inline\n",
    "class ModelNew(nn.Module):\n    def __init__(self):\n        super().__init__()\n",
    "    def forward(self, a, b):\n        return self.op.elementwise_add_cpu(a, b)\n",
    '#include <torch/extension.h>\n#include <omp.h>\ntorch::Tensor add(torch::Tensor a, torch::Tensor b) {\n',
    "    auto out = torch::empty_like(a);\n    const float* pa = a.data_ptr<float>();\n",
    "    #pragma omp parallel for\n    for (int64_t i = 0; i < n; ++i) out[i] = pa[i] + pb[i];\n",
    "__global__ void add_kernel(const float* a, const float* b, float* out, int n) {\n",
    "    int idx = blockIdx.x * blockDim.x + threadIdx.x;\n    if (idx < n) out[idx] = a[idx] + b[idx];\n}\n",
    "```python\n", "```\n", "def get_inputs():\n    return [torch.rand(128, 128)]\n",
    "Reply with the complete ModelNew module in one code block.\n",
]


def make_tokenizer(corpus: list[str] | None = None, vocab_size: int = 400, chat_template: str | None = None):
    """A byte-level BPE tokenizer (every byte string encodes) with <s>, </s>, <pad>, as a fast HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator((corpus or _CORPUS) * 10, trainer)
    # Plain-text prompts start with <s>, as Llama's do; chat templates add it themselves.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if chat_template is not None:
        hf.chat_template = chat_template
    return hf


def tiny_config(tokenizer, **overrides):
    """LlamaConfig: hidden 64, 2 layers, 2 heads of 32 (vLLM CPU needs head_dim >= 32), 120 k parameters."""
    from transformers import LlamaConfig

    kw = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def make_tiny_model(directory, seed: int = 0, chat_template: str | None = None) -> str:
    """Build and save a random tiny Llama + tokenizer in `directory`; return it as a string."""
    import torch
    from transformers import LlamaForCausalLM

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(chat_template=chat_template)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(tok))
    # Random init at std 0.02 gives near-uniform next-token distributions; a larger spread makes the
    # log-probs (and so the tests comparing them) depend on the weights rather than be ~-log(V) everywhere.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def make_random_lora(base_dir: str, directory, seed: int = 1, r: int = 8) -> str:
    """A peft LoRA adapter with random A and B (init_lora_weights=False), so it visibly changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                   task_type="CAUSAL_LM"),
    )
    model.save_pretrained(str(directory))
    return str(directory)


def teacher_forced_logprobs(model_dir: str, prompt_ids, completion_ids, adapter: str | None = None) -> list[float]:
    """log p(completion token | prefix) at T=1 from one full forward pass over prompt+completion (no KV cache)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    n = len(prompt_ids)
    return [lp[n - 1 + j, t].item() for j, t in enumerate(completion_ids)]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """One tiny model per test session, shared by every module that imports this fixture."""
    d = tmp_path_factory.getbasetemp() / "tiny-llama-seed0"
    if not (d / "config.json").exists():
        make_tiny_model(d, seed=0)
    return str(d)


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory) -> str:
    """The same weights with a chat template, for the chat path."""
    d = tmp_path_factory.getbasetemp() / "tiny-llama-chat-seed0"
    if not (d / "config.json").exists():
        make_tiny_model(d, seed=0, chat_template=CHAT_TEMPLATE)
    return str(d)
