"""Named evaluation and calibration texts, and where the shared corpus lives.

* ``heldout``: the reference model's held-out Gutenberg books (never trained on), from the shared corpus.
* ``wikitext2``: WikiText-2 test, from the shared corpus.
* ``calibration``: an excerpt of eight training books (in-domain calibration data), from the shared corpus.
* ``builtin``: English prose that exists on every machine without the corpus: the first half of the Python
  reference documentation bundled with the standard library (``pydoc_data.topics``), for evaluation.
* ``builtin-calibration``: the second half of it, for calibration (never scored by the evaluations above).
* anything else: a path to a UTF-8 text file.

The corpus folder is ``$SPARSEFLOW_DATA`` or ``../shared/data`` beside the repository/working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

# Held out from the reference model's training (recipes/reference_lm): four authors, ~2 MB of prose.
HELDOUT_BOOKS: tuple[str, ...] = (
    "austen-emma.txt",
    "doyle-hound_of_the_baskervilles.txt",
    "twain-tom_sawyer.txt",
    "wells-time_machine.txt",
)
# Calibration excerpt from the training books (in-domain, never the held-out ones): 20 k characters from
# the middle of each of these.
CALIBRATION_BOOKS: tuple[str, ...] = (
    "bronte-jane_eyre.txt", "dickens-great_expectations.txt", "melville-moby_dick.txt", "stoker-dracula.txt",
    "doyle-study_in_scarlet.txt", "eliot-middlemarch.txt", "hawthorne-scarlet_letter.txt",
    "wilde-picture_of_dorian_gray.txt",
)
NAMED_TEXTS = ("heldout", "wikitext2", "builtin", "builtin-calibration", "calibration")


def shared_data_dir(required: bool = False) -> Path | None:
    """The shared corpus folder, or ``None`` (``FileNotFoundError`` when ``required``)."""
    candidates = []
    if os.environ.get("SPARSEFLOW_DATA"):
        candidates.append(Path(os.environ["SPARSEFLOW_DATA"]))
    repo = Path(__file__).resolve().parent.parent
    candidates += [repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if (c / "gutenberg").is_dir():
            return c
    if required:
        raise FileNotFoundError("the shared corpus (gutenberg/, wikitext-2/) was not found: set SPARSEFLOW_DATA "
                                f"or place it at ../shared/data (looked in {[str(c) for c in candidates]})")
    return None


def _gutenberg_dir() -> Path:
    return shared_data_dir(required=True) / "gutenberg"


def gutenberg_books() -> list[Path]:
    """Every book of the shared corpus, sorted by file name."""
    return sorted(_gutenberg_dir().glob("*.txt"))


def training_books() -> list[Path]:
    """The corpus minus the held-out books (what the reference model was trained on)."""
    return [p for p in gutenberg_books() if p.name not in HELDOUT_BOOKS]


def _python_docs() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def heldout_books() -> list[Path]:
    """The held-out books (never trained on), in ``HELDOUT_BOOKS`` order."""
    return [_gutenberg_dir() / b for b in HELDOUT_BOOKS]


def builtin_text() -> str:
    """First half of the Python reference documentation topics (~230 k characters of English prose)."""
    docs = _python_docs()
    return docs[: len(docs) // 2]


def builtin_calibration_text() -> str:
    """Second half of the Python documentation topics: calibration data disjoint from ``builtin_text``."""
    docs = _python_docs()
    return docs[len(docs) // 2:]


def load_text(name_or_path: str | Path) -> str:
    """Text by name (``heldout``, ``wikitext2``, ``builtin``) or from a UTF-8 file; clear errors otherwise."""
    name = str(name_or_path)
    if name == "builtin":
        return builtin_text()
    if name == "builtin-calibration":
        return builtin_calibration_text()
    if name == "heldout":
        return "\n\n".join(p.read_text(encoding="utf-8") for p in heldout_books())
    if name == "calibration":
        parts = []
        for b in CALIBRATION_BOOKS:
            book = (_gutenberg_dir() / b).read_text(encoding="utf-8")
            parts.append(book[len(book) // 2: len(book) // 2 + 20_000])
        return "\n\n".join(parts)
    if name == "wikitext2":
        return (shared_data_dir(required=True) / "wikitext-2" / "test.txt").read_text(encoding="utf-8")
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: not a file and not one of the named texts {NAMED_TEXTS}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from err
