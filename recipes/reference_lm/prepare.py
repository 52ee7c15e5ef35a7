"""Step 1 of the reference LM recipe (CPU, ~2 minutes): train the byte-level BPE tokenizer on the training
books and tokenize the corpus into uint16 token files for the GPU run.

    python recipes/reference_lm/prepare.py --out .gpu_carry/reference_lm

Writes ``tokenizer/`` (transformers-loadable), ``train.npy`` and ``heldout.npy`` (token ids, books separated
by the end-of-text token) and ``unigram_counts.json`` (training-token frequencies, the baseline model).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sparseflow.texts import heldout_books, training_books

VOCAB_SIZE = 8192
EOT = "<|endoftext|>"


def train_tokenizer(files: list[Path], vocab_size: int = VOCAB_SIZE):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=True,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(f) for f in files], trainer)
    return tok


def encode_books(tok, files: list[Path], desc: str) -> np.ndarray:
    eot = tok.token_to_id(EOT)
    parts = []
    for f in tqdm(files, desc=desc, unit="book"):
        parts.append(np.asarray(tok.encode(f.read_text(encoding="utf-8")).ids, dtype=np.uint16))
        parts.append(np.asarray([eot], dtype=np.uint16))
    return np.concatenate(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    train_files = training_books()
    heldout_files = heldout_books()
    tok = train_tokenizer(train_files)

    from transformers import PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT,
                                     model_max_length=1024)
    hf_tok.save_pretrained(str(args.out / "tokenizer"))

    train = encode_books(tok, train_files, "tokenize train")
    heldout = encode_books(tok, heldout_files, "tokenize held-out")
    np.save(args.out / "train.npy", train)
    np.save(args.out / "heldout.npy", heldout)
    counts = np.bincount(train, minlength=VOCAB_SIZE)
    (args.out / "unigram_counts.json").write_text(json.dumps(counts.tolist()))
    n_bytes = sum(f.stat().st_size for f in train_files)
    print(json.dumps({"train_books": len(train_files), "train_tokens": int(train.size),
                      "heldout_tokens": int(heldout.size), "bytes_per_token": round(n_bytes / train.size, 3)}))


if __name__ == "__main__":
    main()
