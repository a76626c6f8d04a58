"""Upstream InternLM2 tokenizer references (run in a transformers 4.49.0 venv with sentencepiece).

usage: python tests/parity_tools/make_reference_internlm2_tokenizer.py UPSTREAM_GIT TOKENIZER_DIR OUT_DIR [COMMIT]

UPSTREAM_GIT: a bytedance/Sa2VA clone (bare or not); COMMIT (default 9832e1a...): the revision whose
``projects/sa2va/hf/models/tokenization_internlm2.py`` is run. TOKENIZER_DIR: the tokenizer files that
``sa2va.testing.internlm2.write_tokenizer`` wrote. The upstream file is copied with ``git show`` into a temporary
folder next to copies of the tokenizer files (never into this repository) and loaded through ``AutoTokenizer`` with
``trust_remote_code``, as a release folder is. For every string of OUT_DIR/strings.json it records
``tokenizer.encode(string)`` and the decoded text of those ids (with and without special tokens) in
OUT_DIR/reference.json, with the versions and the tokenizer files' sha256.
No upstream code is part of this file.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

UPSTREAM_FILE = "projects/sa2va/hf/models/tokenization_internlm2.py"
DEFAULT_COMMIT = "9832e1a80e74ed513e8072bf882a09bdd80566c4"
FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def main(upstream: Path, tokenizer_dir: Path, out: Path, commit: str) -> None:
    import sentencepiece
    import transformers
    from transformers import AutoTokenizer

    run_dir = Path(tempfile.mkdtemp(prefix="sa2va_upstream_tok_"))
    try:
        for name in FILES:
            shutil.copy(tokenizer_dir / name, run_dir / name)
        data = subprocess.run(["git", "-C", str(upstream), "show", f"{commit}:{UPSTREAM_FILE}"],
                              capture_output=True, check=True).stdout
        (run_dir / "tokenization_internlm2.py").write_bytes(data)
        tokenizer = AutoTokenizer.from_pretrained(str(run_dir), trust_remote_code=True)
        cls = type(tokenizer).__name__
        strings = json.loads((out / "strings.json").read_text(encoding="utf-8"))["strings"]
        cases = []
        for text in strings:
            ids = tokenizer.encode(text)
            cases.append({"ids": ids, "decoded": tokenizer.decode(ids, skip_special_tokens=False),
                          "decoded_skip_special": tokenizer.decode(ids, skip_special_tokens=True)})
        ref = {"tokenizer_class": cls, "transformers_version": transformers.__version__,
               "sentencepiece_version": sentencepiece.__version__, "upstream_repo": "bytedance/Sa2VA",
               "upstream_commit": commit, "upstream_file": UPSTREAM_FILE,
               "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id, "unk_token_id": tokenizer.unk_token_id,
               "token_ids": {t: tokenizer.convert_tokens_to_ids(t) for t in
                             ("<|im_end|>", "<|im_start|>", "<img>", "</img>", "<IMG_CONTEXT>", "[SEG]", "<vp>",
                              "</vp>", "<s>", "</s>", "<unk>")},
               "files_sha256": {name: hashlib.sha256((tokenizer_dir / name).read_bytes()).hexdigest()
                                for name in FILES},
               "cases": cases}
        (out / "reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{cls}: {len(cases)} strings")
    finally:
        shutil.rmtree(run_dir)


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] if len(sys.argv) == 5 else DEFAULT_COMMIT)
