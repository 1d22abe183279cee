"""Conversations in the ``messages`` format: load the bundled set or the learner's own, and check them before training.

``load_chat_data(None)`` is the bundled ``data/chat`` set; a path to a ``.jsonl``/``.json`` file or a data set id
loads the learner's own through ``datasets``. ``check_conversations`` lists what is wrong, row by row, with the
fix; ``validate_conversations`` raises one error that lists them all. Nothing here writes to the learner's file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from .loading import DATA, load_json_splits

CHAT_DIR = DATA / "chat"
ROLES = ("system", "user", "assistant")
# roles of other formats, and what they are called here
ROLE_FIXES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant", "prompter": "user"}
SHOWN = 10  # problems listed in an error; the rest are counted


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data: where (a row, or None for the whole set), what, and how to fix it."""

    row: int | None
    what: str
    fix: str

    def __str__(self) -> str:
        where = "the data set" if self.row is None else f"row {self.row}"
        return f"{where}: {self.what} Fix: {self.fix}"


class ChatDataError(ValueError):
    """The data cannot be trained on as it is; ``problems`` says where and how to fix it."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        lines = [str(p) for p in self.problems[:SHOWN]]
        if len(self.problems) > SHOWN:
            lines.append(f"... and {len(self.problems) - SHOWN} more problems of the same kinds")
        super().__init__(f"{len(self.problems)} problem(s) in the conversations:\n  " + "\n  ".join(lines))


def _check_file(path: Path) -> None:
    """Raise ChatDataError if ``path`` is not UTF-8 JSON Lines or a JSON array of objects, naming the line (1-based)
    and, for JSON Lines, the row it holds (0-based, as every other problem counts rows)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ChatDataError([Problem(line - 1, f"{path.name} is not UTF-8 (byte {e.start}, line {line}).",
                                     "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.jsonl > out.jsonl`)")])
    if text.lstrip().startswith("["):  # a JSON array; anything else is read as JSON Lines, as `datasets` does
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ChatDataError([Problem(None, f"{path.name} is not valid JSON: {e.msg} at line {e.lineno}, "
                                         f"column {e.colno}.", "fix the JSON there, or write one conversation "
                                         "per line (JSON Lines, .jsonl)")])
        if not isinstance(rows, list):
            raise ChatDataError([Problem(None, f"{path.name} holds a JSON {type(rows).__name__}, not a list of "
                                         "conversations.", 'write [{"messages": [...]}, ...] or JSON Lines')])
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError as e:
            raise ChatDataError([Problem(number - 1, f"line {number} of {path.name} is not valid JSON ({e.msg}, "
                                         f"column {e.colno}).", "write one JSON object per line")])


def load_chat_data(data: str | os.PathLike | None = None, test_size: int | float = 0.1, seed: int = 0):
    """The conversations as a ``DatasetDict`` with ``train`` and ``test`` splits.

    ``data`` is None (the bundled ``data/chat``), a ``.jsonl``/``.json`` file (split here with ``seed`` when it has
    one split), or a data set id that ``datasets.load_dataset`` knows. Files are checked first: a file that is not
    UTF-8 or not JSON gets an error that names the line, not a parser's stack trace. Then every conversation's
    structure is checked before any split, so a ``ChatDataError`` names rows as the file or data set numbers them
    (from 0); lengths need a tokenizer with a chat template: ``check_conversations`` checks them.
    """
    from datasets import DatasetDict, load_dataset

    if data is None:
        return load_json_splits(CHAT_DIR, "data/build_chat.py")
    path = Path(data).expanduser()
    if path.suffix in (".json", ".jsonl") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"No file {path}. Give the path of a .jsonl or .json file of conversations.")
        _check_file(path)
        loaded = load_dataset("json", data_files=str(path))
    else:
        loaded = load_dataset(str(data))
    for name, rows in loaded.items():
        if problems := check_conversations(rows):
            raise ChatDataError([Problem(p.row, p.what if len(loaded) == 1 else f"({name} split) {p.what}", p.fix)
                                 for p in problems])
    if "test" in loaded:
        return loaded
    split = loaded["train"].train_test_split(test_size=test_size, seed=seed)
    return DatasetDict(train=split["train"], test=split["test"])


def _row_problems(i: int, messages: Any) -> list[Problem]:
    """What is wrong with the conversation of row ``i`` (the structure only; lengths need a tokenizer)."""
    if not isinstance(messages, list) or not messages:
        return [Problem(i, f"`messages` is {type(messages).__name__ if messages else 'empty'}, not a list of turns.",
                        'write a list such as [{"role": "user", "content": ...}, {"role": "assistant", ...}]')]
    problems = []
    for j, turn in enumerate(messages):
        # `datasets` gives every turn every key any row has, None where a row has none: None is absent
        keys = {k for k, v in turn.items() if v is not None} if isinstance(turn, dict) else set()
        if not {"role", "content"} <= keys:
            found = sorted(keys) if isinstance(turn, dict) else type(turn).__name__
            fix = ("rename the keys: ShareGPT's from/value are role/content" if {"from", "value"} <= keys
                   else 'give every turn a "role" and a "content"')
            problems.append(Problem(i, f"turn {j} has {found}, not role and content.", fix))
            continue
        role, content = turn["role"], turn["content"]
        if role not in ROLES:
            fix = f'rename it "{ROLE_FIXES[role]}"' if role in ROLE_FIXES else f"use one of {', '.join(ROLES)}"
            problems.append(Problem(i, f"turn {j} has the unknown role {role!r}.", fix))
        if not isinstance(content, str) or not content.strip():
            problems.append(Problem(i, f"turn {j} ({role}) has empty content.",
                                    "write the turn's text, or drop the turn (or the row)"))
    if problems:
        return problems
    if not any(turn["role"] == "assistant" for turn in messages):
        problems.append(Problem(i, "no assistant turn: nothing to learn from this row.",
                                "add the answer as an assistant turn, or drop the row"))
    return problems


def assistant_tokens(tokenizer, messages: list[dict[str, str]]) -> tuple[int, list[int]]:
    """(length in tokens, indices of the assistant tokens) of one conversation rendered by the tokenizer's template."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    mask = out["assistant_masks"]
    return len(out["input_ids"]), [k for k, m in enumerate(mask) if m]


def check_conversations(rows: Iterable[dict[str, Any]], tokenizer=None, max_length: int | None = None,
                        column: str = "messages") -> list[Problem]:
    """Every problem of ``rows`` (a ``datasets.Dataset`` or a list of dicts), with the row and the fix.

    With a ``tokenizer`` whose chat template marks the assistant turns (``{% generation %}``) and ``max_length``,
    conversations longer than ``max_length`` tokens are reported once, for the whole set: how many, how many
    assistant tokens truncation would drop, and how many would keep no assistant token at all (they train nothing).
    """
    rows = list(rows)
    if rows and column not in rows[0]:
        found = ", ".join(sorted(rows[0])) or "none"
        fix = (f"rename the column: dataset.rename_column({next(iter(rows[0]))!r}, {column!r})"
               if len(rows[0]) == 1 else f"put each conversation in a column named {column!r}")
        return [Problem(None, f"no {column!r} column (columns: {found}).", fix)]
    problems = [p for i, row in enumerate(rows) for p in _row_problems(i, row[column])]
    if tokenizer is None or max_length is None or problems:
        return problems
    long_rows, dropped, emptied = [], 0, []
    for i, row in enumerate(rows):
        length, kept = assistant_tokens(tokenizer, row[column])
        if length > max_length:
            long_rows.append(i)
            lost = sum(k >= max_length for k in kept)
            dropped += lost
            if lost == len(kept):
                emptied.append(i)
    if long_rows:
        problems.append(Problem(
            None, f"{len(long_rows)} of {len(rows)} conversations are longer than max_length={max_length} tokens "
                  f"(rows {_few(long_rows)}); truncation would drop {dropped} assistant tokens"
                  + (f", and {len(emptied)} conversations would keep none (rows {_few(emptied)}): they would train "
                     "nothing." if emptied else "."),
            "raise max_length, split long conversations into shorter ones, or drop them"))
    return problems


def _few(rows: list[int], n: int = 5) -> str:
    return ", ".join(map(str, rows[:n])) + (f", ... ({len(rows)} in all)" if len(rows) > n else "")


def validate_conversations(rows: Iterable[dict[str, Any]], tokenizer=None, max_length: int | None = None,
                           column: str = "messages") -> None:
    """Raise ``ChatDataError`` listing every problem :func:`check_conversations` finds; return None if there is none."""
    problems = check_conversations(rows, tokenizer, max_length, column)
    if problems:
        raise ChatDataError(problems)
