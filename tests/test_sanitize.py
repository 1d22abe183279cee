"""tests/sanitize.cfg masks exactly what notebooks/README.md says nbval must not compare."""
import re
from pathlib import Path

from nbval.plugin import get_sanitize_patterns

CFG = Path(__file__).resolve().parent / "sanitize.cfg"


def sanitize(text: str) -> str:
    """Apply the sanitizers as nbval does: its own parser of the file, every regex in order."""
    for regex, replace in get_sanitize_patterns(CFG.read_text(encoding="ascii")):  # nbval opens it with the locale's encoding
        text = re.sub(regex, replace, text)
    return text


def test_every_sanitizer_in_the_file_reaches_nbval():
    text = CFG.read_text(encoding="ascii")
    listed = sum(line.startswith("regex: ") for line in text.splitlines())
    assert len(get_sanitize_patterns(text)) == listed, "nbval ignores a regex: line not followed by its replace: line"


def test_numbers_after_the_approx_sign_are_masked():
    a = "300 steps; loss at the first / last logging step: ≈8.05 / ≈0.0582 (≈-0.01%), difference ≈1.4e-06"
    b = "300 steps; loss at the first / last logging step: ≈8.05 / ≈0.0583 (≈+0.02%), difference ≈9.5e-07"
    assert sanitize(a) == sanitize(b)


def test_the_rest_of_the_line_is_still_compared():
    assert sanitize("≈0.0582 over 300 steps") != sanitize("≈0.0582 over 400 steps")
    assert sanitize("loss 0.0582") != sanitize("loss 0.0583")  # no sign: compared strictly
    assert sanitize("6,820,096 parameters") == "6,820,096 parameters"


def test_padded_table_cells_are_masked_whatever_their_width():
    assert sanitize("mlp.down_proj   ≈   37.00%") == sanitize("mlp.down_proj   ≈  100.00%")
