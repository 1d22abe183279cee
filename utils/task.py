"""The fine-tuning task: greedy completions and exact-match scoring on the held-out split."""
from __future__ import annotations

from typing import Sequence

import math

import torch


@torch.no_grad()
def generate_ids(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 12, batch_size: int = 64,
                 add_special_tokens: bool = True) -> list[list[int]]:
    """Greedy continuations of ``prompts`` as token ids (the new tokens only, the EOS kept, the padding after it
    dropped), batched with left padding. ``add_special_tokens=False`` for text a chat template already rendered."""
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    eos = model.generation_config.eos_token_id
    stops = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    out: list[list[int]] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(list(prompts[i : i + batch_size]), return_tensors="pt", padding=True,
                            add_special_tokens=add_special_tokens).to(device)
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            for row in ids[:, enc["input_ids"].shape[1]:].tolist():
                end = next((k + 1 for k, t in enumerate(row) if t in stops), len(row))
                out.append(row[:end])
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 12, batch_size: int = 64) -> list[str]:
    """Greedy completions of ``prompts`` (only the new text, special tokens dropped), batched with left padding."""
    ids = generate_ids(model, tokenizer, prompts, max_new_tokens, batch_size)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference, both stripped of surrounding whitespace."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("exact_match needs at least one example")
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / len(references)


def score(model, tokenizer, dataset, n: int | None = None) -> tuple[float, list[str]]:
    """Exact match of greedy completions on ``dataset`` (prompt/completion columns); returns (score, predictions)."""
    rows = dataset if n is None else dataset.select(range(min(n, len(dataset))))
    preds = generate(model, tokenizer, rows["prompt"])
    return exact_match(preds, rows["completion"]), preds


@torch.no_grad()
def perplexity(model, tokenizer, text: str, block: int = 128, batch_size: int = 16,
               max_blocks: int | None = None) -> float:
    """exp(mean next-token cross-entropy) of ``text`` cut into rows of ``block`` tokens.

    The same measure ``data/build_model.py`` reports for the held-out chapters; ``max_blocks``
    uses only the first rows (faster, for comparing variants of one model on the same text).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    n = len(ids) // block
    if max_blocks is not None:
        n = min(n, max_blocks)
    if n == 0:
        raise ValueError(f"text too short: {len(ids)} tokens, fewer than one block of {block}")
    rows = ids[: n * block].view(n, block)
    total, count = 0.0, 0
    try:
        for i in range(0, n, batch_size):
            x = rows[i : i + batch_size].to(device)
            loss = model(input_ids=x, labels=x).loss.float().item()
            predicted = x.numel() - len(x)
            total, count = total + loss * predicted, count + predicted
    finally:
        model.train(was_training)
    return math.exp(total / count)
