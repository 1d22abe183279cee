"""Build the course's bundled model, ``data/kjv-llama``, from the corpus the repo ships.

Seeded and CPU-only: a byte-level BPE tokenizer and a small Llama-architecture causal LM, both
trained on the King James Version (``data/corpus/kjv.tsv.gz``), one verse a line with its reference
as a printed Bible gives it (``Genesis 1:3 And God said, Let there be light: ...``), so that the ten
digits are ordinary, trained tokens, as in every real pretrained model. Every 25th chapter is held out;
the script measures held-out perplexity on it, writes it to ``data/lm_heldout.txt`` for the
notebooks, and records the numbers of the run in ``data/kjv-llama/build_log.json``.

    python data/build_model.py            # about 20 minutes on 2 CPU cores
    python data/build_model.py --steps 50 # a quick smoke run
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

DATA = Path(__file__).resolve().parent
CORPUS = DATA / "corpus" / "kjv.tsv.gz"
OUT = DATA / "kjv-llama"
HELDOUT = DATA / "lm_heldout.txt"
SEED = 0
VOCAB = 2048
EOS, PAD = "<|endoftext|>", "<pad>"
HELDOUT_EVERY = 25  # every 25th chapter is held out
PROMPTS = ["Genesis 1:1 In the beginning", "And the LORD said unto Moses,"]


def read_corpus() -> tuple[list[str], list[str]]:
    """Split the verses into (train, held-out) by chapter: every 25th chapter is held out.

    Each verse keeps its reference in front: ``1 Kings 3:9 Give therefore thy servant ...``.
    """
    train, held, chapters = [], [], {}
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        for line in f:
            book, chapter, verse, text = line.rstrip("\n").split("\t")
            idx = chapters.setdefault((book, chapter), len(chapters))
            (held if idx % HELDOUT_EVERY == HELDOUT_EVERY - 1 else train).append(f"{book} {chapter}:{verse} {text}")
    return train, held


def digit_cosine(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast) -> float:
    """Mean pairwise cosine similarity of the ten digits' input embeddings (1.0: all the same direction)."""
    ids = tokenizer.convert_tokens_to_ids([str(d) for d in range(10)])
    emb = torch.nn.functional.normalize(model.get_input_embeddings().weight[ids].detach().float(), dim=-1)
    cos = emb @ emb.T
    return ((cos.sum() - cos.diagonal().sum()) / (10 * 9)).item()


def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any input encodes), digits split one per token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD, model_max_length=256
    )


def model_config(tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """Llama architecture: 8 decoder layers, hidden 256, grouped-query attention (4 heads, 2 KV)."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def blocks(ids: list[int], block: int) -> torch.Tensor:
    """Cut one long token stream into rows of ``block`` tokens (the remainder is dropped)."""
    n = len(ids) // block
    return torch.tensor(ids[: n * block]).view(n, block)


@torch.no_grad()
def perplexity(model: LlamaForCausalLM, data: torch.Tensor, batch: int = 32) -> float:
    """exp(mean next-token cross-entropy) over all rows of ``data``."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data), batch):
        x = data[i : i + batch]
        loss = model(input_ids=x, labels=x).loss
        n = x.numel() - len(x)  # tokens that are predicted
        total, count = total + loss.item() * n, count + n
    return math.exp(total / count)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()

    random.seed(SEED)
    torch.manual_seed(SEED)
    train_text, held_text = read_corpus()
    tokenizer = train_tokenizer(train_text)
    sep = "\n"
    train_ids = tokenizer(sep.join(train_text) + sep)["input_ids"]
    held_ids = tokenizer(sep.join(held_text) + sep)["input_ids"]
    train_data, held_data = blocks(train_ids, args.block), blocks(held_ids, args.block)
    HELDOUT.write_text(sep.join(held_text) + sep, encoding="utf-8")

    config = model_config(tokenizer)
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)),
    )
    gen = torch.Generator().manual_seed(SEED)
    losses = []
    start = time.perf_counter()
    model.train()
    for step in (bar := tqdm(range(args.steps), desc="pretraining")):
        x = train_data[torch.randint(len(train_data), (args.batch,), generator=gen)]
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
        bar.set_postfix(loss=f"{loss.item():.3f}")
    train_seconds = time.perf_counter() - start

    ppl = perplexity(model, held_data)
    cosine = digit_cosine(model, tokenizer)
    model.eval()
    samples = {}
    for prompt in PROMPTS:
        enc = tokenizer(prompt, return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        samples[prompt] = tokenizer.decode(out[0], skip_special_tokens=True)

    OUT.mkdir(exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(OUT, safe_serialization=True)
    tokenizer.save_pretrained(OUT)
    log = {
        "seed": SEED,
        "parameters": n_params,
        "vocab_size": len(tokenizer),
        "train_verses": len(train_text),
        "heldout_verses": len(held_text),
        "train_tokens": len(train_ids),
        "heldout_tokens": len(held_ids),
        "steps": args.steps,
        "batch": args.batch,
        "block": args.block,
        "tokens_seen": args.steps * args.batch * args.block,
        "lr": args.lr,
        "train_seconds": round(train_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "final_train_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "heldout_perplexity": round(ppl, 2),
        "digit_embedding_mean_cosine": round(cosine, 3),
        "greedy_samples": samples,
        "loss_every_50_steps": losses[::50],
    }
    (OUT / "build_log.json").write_text(json.dumps(log, indent=2) + "\n")
    print(json.dumps({k: v for k, v in log.items() if k != "loss_every_50_steps"}, indent=2))


if __name__ == "__main__":
    main()
