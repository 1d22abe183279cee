"""utils.chat_data: the bundled conversations load and pass; each kind of bad input gets its row and its fix."""
import hashlib
import json
from pathlib import Path

import pytest

from utils.chat_data import ChatDataError, Problem, check_conversations, load_chat_data, validate_conversations

SYSTEM = {"role": "system", "content": "Be brief."}
GOOD = {"messages": [SYSTEM, {"role": "user", "content": "Year?"}, {"role": "assistant", "content": "1821"}]}
# a small template with generation markers, enough to count tokens (notebook 11 writes the course's)
TEMPLATE = ("{% for m in messages %}{{ m['role'] + ': ' }}{% if m['role'] == 'assistant' %}{% generation %}"
            "{{ m['content'] + eos_token }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}\n{% endfor %}")


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from utils.loading import BUNDLED_MODEL

    tok = AutoTokenizer.from_pretrained(BUNDLED_MODEL)
    tok.chat_template = TEMPLATE
    return tok


def test_the_bundled_conversations_load_and_pass(tokenizer):
    ds = load_chat_data()
    assert (len(ds["train"]), len(ds["test"])) == (1200, 200)
    assert check_conversations(ds["train"], tokenizer, max_length=256) == []
    turns = [[t["role"] for t in r["messages"]] for r in ds["train"]]
    assert {len(t) - (t[0] == "system") for t in turns} == {2, 4, 6}  # 1 to 3 exchanges
    assert 0.2 < sum(t[0] == "system" for t in turns) / len(turns) < 0.4  # a system turn in about 30%


def test_a_file_of_ones_own_is_split_and_left_as_it_was(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [GOOD] * 20)
    before = digest(path)
    ds = load_chat_data(path, test_size=5)
    assert (len(ds["train"]), len(ds["test"])) == (15, 5)
    assert digest(path) == before


def test_a_json_array_loads_too(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([GOOD] * 10), encoding="utf-8")
    assert len(load_chat_data(path, test_size=2)["train"]) == 8


@pytest.mark.parametrize("content, expected", [
    (b'{"messages": []}\n{"messages": [\xe9]}\n', ["not UTF-8", "line 2", "iconv"]),
    (b'{"messages": []}\n{"messages": [}\n', ["line 2", "not valid JSON", "one JSON object per line"]),
    (b'[{"messages": []},]', ["not valid JSON", "line 1", "column"]),
])
def test_a_file_that_is_not_utf8_json_names_the_line_and_is_not_modified(tmp_path, content, expected):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(ChatDataError) as error:
        load_chat_data(path)
    for words in expected:
        assert words in str(error.value)
    assert path.read_bytes() == content


def test_a_missing_file_says_what_to_give(tmp_path):
    with pytest.raises(FileNotFoundError, match="path of a .jsonl or .json file"):
        load_chat_data(tmp_path / "typo.jsonl")


@pytest.mark.parametrize("rows, expected", [
    ([{"conversations": GOOD["messages"]}], ["no 'messages' column", "conversations",
                                             "rename_column('conversations', 'messages')"]),
    ([GOOD, {"messages": [{"role": "human", "content": "Year?"}, {"role": "assistant", "content": "1821"}]}],
     ["row 1", "turn 0", "unknown role 'human'", 'rename it "user"']),
    ([{"messages": [{"role": "narrator", "content": "Hi"}, {"role": "assistant", "content": "1"}]}],
     ["row 0", "unknown role 'narrator'", "system, user, assistant"]),
    ([GOOD, GOOD, {"messages": [SYSTEM, {"role": "user", "content": "Year?"}, {"role": "assistant", "content": " "}]}],
     ["row 2", "turn 2 (assistant) has empty content", "drop the turn"]),
    ([{"messages": [SYSTEM, {"role": "user", "content": "Year?"}]}],
     ["row 0", "no assistant turn", "add the answer as an assistant turn"]),
    ([{"messages": [{"from": "human", "value": "Year?"}]}], ["row 0", "turn 0", "from/value are role/content"]),
    ([{"messages": "User: Year?"}], ["row 0", "not a list of turns"]),
])
def test_each_bad_row_is_named_with_its_fix(rows, expected):
    problems = check_conversations(rows)
    assert problems and all(isinstance(p, Problem) for p in problems)
    with pytest.raises(ChatDataError) as error:
        validate_conversations(rows)
    for words in expected:
        assert words in str(error.value), (words, str(error.value))


def test_bad_rows_in_a_file_are_reported_at_load_by_their_row_in_the_file(tmp_path):
    sharegpt = {"messages": [{"from": "human", "value": "Year?"}, {"from": "gpt", "value": "1821"}]}
    rows = [GOOD, {"messages": [{"role": "bot", "content": "hi"}]}, GOOD, GOOD, sharegpt]
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    before = digest(path)
    with pytest.raises(ChatDataError) as error:
        load_chat_data(path, test_size=1)
    message = str(error.value)
    assert message.startswith("3 problem(s)")  # one in row 1, one per turn in row 4
    assert "row 1: turn 0 has the unknown role 'bot'" in message and 'rename it "assistant"' in message
    assert "row 4: turn 0 has ['from', 'value'], not role and content" in message  # not the None-filled keys
    assert digest(path) == before


def test_long_conversations_are_counted_with_the_assistant_tokens_truncation_drops(tokenizer):
    long_answer = {"role": "assistant", "content": "year " * 40}
    rows = [GOOD, {"messages": [SYSTEM, {"role": "user", "content": "Year? " * 30}, long_answer]},
            {"messages": [SYSTEM, {"role": "user", "content": "Year?"}, long_answer]}]
    masks = [tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True,
                                           return_assistant_tokens_mask=True)["assistant_masks"] for r in rows]
    lengths = [len(m) for m in masks]
    max_length = lengths[0] + 5
    first_answer_token = [m.index(1) for m in masks]
    assert first_answer_token[1] >= max_length > first_answer_token[2]  # row 1 is cut before its answer, row 2 in it
    dropped = sum(sum(m[max_length:]) for m in masks)
    (problem,) = check_conversations(rows, tokenizer, max_length)
    assert problem.row is None
    assert f"2 of 3 conversations are longer than max_length={max_length}" in str(problem)
    assert f"drop {dropped} assistant tokens" in str(problem)
    assert "1 conversations would keep none (rows 1)" in str(problem)
    assert "raise max_length" in str(problem)
    assert check_conversations(rows, tokenizer, max(lengths)) == []


def test_an_error_lists_the_first_problems_and_counts_the_rest():
    rows = [{"messages": [{"role": "bot", "content": "x"}]}] * 25
    with pytest.raises(ChatDataError) as error:
        validate_conversations(rows)
    message = str(error.value)
    assert message.startswith("25 problem(s)")
    assert message.count("unknown role 'bot'") == 10 and "and 15 more problems" in message
