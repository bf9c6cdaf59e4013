import os

# Must be set before any @triton.jit is imported: kernels run on the CPU through
# Triton's interpreter, and BLAS stays single-threaded so tests are repeatable.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Test models are tiny: one intra-op thread is faster than two that spin-wait on each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

WORDS = (
    "the quick brown fox jumps over lazy dog river mountain city history science music art war peace "
    "king queen village forest ocean island bridge tower market school language number world people"
).split()


def _sample_texts(n: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80))) + "." for _ in range(n)]


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    """Deterministic pseudo-English documents (long enough to pass the default min_chars)."""
    return _sample_texts(300)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer trained in a second, with an EOS token (no hub download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_sample_texts(200, seed=1), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A random 4-layer GPT-2 (d=32) and its tokenizer saved as a local model directory."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=4, n_embd=32, n_head=2, n_positions=256, vocab_size=len(tiny_tokenizer),
                        eos_token_id=tiny_tokenizer.eos_token_id, bos_token_id=tiny_tokenizer.eos_token_id)
    path = tmp_path_factory.mktemp("tiny_gpt2")
    GPT2LMHeadModel(config).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory, sample_texts) -> Path:
    """A local text corpus: documents separated by blank lines."""
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text("\n\n".join(sample_texts) + "\n")
    return path


def assets_dir() -> Path | None:
    """The offline real assets fetched by `make assets` (SmolLM2 GGUF, Wikipedia dump sample, GPT-2 BPE)."""
    path = Path(os.environ.get("GHOSTTRACK_ASSETS", Path(__file__).resolve().parents[1] / ".cache" / "assets"))
    return path if path.exists() else None


@pytest.fixture(autouse=True)
def _cwd_is_restored():
    """A test that changes the working folder must restore it (monkeypatch.chdir does): later tests
    find the repo's files and assets through relative paths."""
    before = os.getcwd()
    yield
    after = os.getcwd()
    if after != before:
        os.chdir(before)
        pytest.fail(f"the test left the working folder at {after} (use monkeypatch.chdir)", pytrace=False)
