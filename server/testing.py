"""Tiny random models built in code, for tests, demos in CI and benchmarks of the plumbing.

A 2-layer Llama with hidden size 32 and a byte-level BPE tokenizer trained on
a few sentences: it loads in well under a second and exercises every code path
of the real model (left padding, soft prompts, choice scoring).
"""

from __future__ import annotations

from cbpt.common.limits import Limits
from cbpt.server.adapters.bbt import BlackBoxTuning
from cbpt.server.adapters.cbp import CustomizedBlackBoxPrompt
from cbpt.server.adapters.generator import GeneratorConfig, PromptGenerator
from cbpt.server.adapters.none import NoPrompt
from cbpt.server.engine import ScoringEngine
from cbpt.server.model import ModelBundle, prepare_bundle

_CORPUS = [
    "Review: a gripping, funny and moving film\nSentiment: positive",
    "Review: dull, slow and far too long\nSentiment: negative",
    "Tweet: the new phone is fine I guess\nSentiment: neutral",
    "Question: is the sky blue? Answer: yes no maybe",
    "The quick brown fox jumps over the lazy dog 0123456789 !?.,:;'\"()[]",
]


def tiny_tokenizer(vocab_size: int = 512, bos: bool = False):
    """A byte-level BPE tokenizer trained in code; ``bos`` makes it prepend a BOS token like Llama-2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", tokenizer.token_to_id("<bos>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )


def tiny_bundle(seed: int = 0, *, hidden_size: int = 32, layers: int = 2, bos: bool = False) -> ModelBundle:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer(bos=bos)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float()
    return prepare_bundle(model, tokenizer, model_id=f"tiny-llama-{seed}")


def tiny_generator(
    bundle: ModelBundle, *, dimension: int, prompt_length: int, seed: int = 0
) -> PromptGenerator:
    """A randomly initialised CBP generator bound to ``bundle`` (stands in until one is trained)."""
    import torch

    config = GeneratorConfig(
        base_model_fingerprint=bundle.fingerprint,
        hidden_size=bundle.hidden_size,
        embedding_std=bundle.embedding_std,
        bottleneck=16,
        prompt_length=prompt_length,
        dimension=dimension,
        projection_seed=seed,
        domain="test",
        description="randomly initialised generator for tests",
    )
    torch.manual_seed(seed)
    return PromptGenerator(config)


def tiny_engine(
    limits: Limits | None = None,
    bbt_dimension: int = 16,
    prompt_length: int = 4,
    seed: int = 0,
    with_cbp: bool = True,
    **engine_options,
) -> ScoringEngine:
    """An engine serving "none", "bbt" and (optionally) "cbp" on a tiny random model."""
    bundle = tiny_bundle(seed)
    adapters = [
        NoPrompt(),
        BlackBoxTuning(
            bundle.hidden_size,
            bundle.embedding_std,
            dimension=bbt_dimension,
            prompt_length=prompt_length,
            seed=seed,
        ),
    ]
    if with_cbp:
        generator = tiny_generator(bundle, dimension=bbt_dimension, prompt_length=prompt_length, seed=seed)
        adapters.append(CustomizedBlackBoxPrompt(generator, name="cbp"))
    return ScoringEngine(bundle, adapters, limits, **engine_options)
