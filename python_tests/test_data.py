import os

import numpy as np
import pytest
import torch

from mdm_ext.data import ByteTokenizer, TokenDataset, Tokenizer, token_dtype, write_tokens


def test_byte_tokenizer_round_trip():
    tokenizer = ByteTokenizer()
    text = "masked diffusion — déjà vu, 扩散 🙂"
    ids = tokenizer.encode(text)
    assert all(0 <= i < 256 for i in ids) and len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(torch.tensor(ids)) == text
    assert isinstance(tokenizer, Tokenizer)


def test_byte_tokenizer_skips_mask_and_replaces_broken_bytes():
    tokenizer = ByteTokenizer()
    assert (tokenizer.vocab_size, tokenizer.mask_id) == (257, 256)
    assert tokenizer.decode([104, 256, 105, 300, -1]) == "hi"
    assert tokenizer.decode(tokenizer.encode("é")[:1]) == "\ufffd"


def test_written_files_get_the_usual_mode(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    write_tokens(tmp_path / "ids.bin", [1, 2, 3])
    assert (tmp_path / "ids.bin").stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_tokens_picks_dtype_and_round_trips(tmp_path):
    assert write_tokens(tmp_path / "small.bin", [0, 5, 65535]) == np.uint16
    assert write_tokens(tmp_path / "big.bin", [0, 65536]) == np.uint32
    dataset = TokenDataset(tmp_path / "big.bin", dtype="uint32")
    assert len(dataset) == 2 and dataset.tokens.tolist() == [0, 65536]
    assert token_dtype(50258) == np.uint16
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_write_tokens_leaves_a_file_that_holds_the_ids(tmp_path):
    path = tmp_path / "ids.bin"
    write_tokens(path, np.arange(100) % 7)
    before = path.stat()
    assert write_tokens(path, np.arange(100) % 7) == np.uint16
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not written again
    write_tokens(path, np.arange(100) % 5)
    assert path.stat().st_ino != before.st_ino and TokenDataset(path).tokens.tolist() == (np.arange(100) % 5).tolist()


class WordTokenizer:
    """A user's tokenizer: whole words, the mask last."""

    def __init__(self, words: list[str]):
        self.words = words
        self.vocab_size = len(words) + 1
        self.mask_id = len(words)

    def encode(self, text: str) -> list[int]:
        return [self.words.index(word) for word in text.split()]

    def decode(self, ids) -> str:
        return " ".join(self.words[int(i)] for i in ids)


def test_from_text_takes_a_users_tokenizer(tmp_path):
    tokenizer = WordTokenizer(["the", "cat", "sat"])
    assert isinstance(tokenizer, Tokenizer)
    dataset = TokenDataset.from_text("the cat sat the cat", tokenizer, tmp_path / "words.bin")
    assert dataset.vocab_size == 3 and tokenizer.decode(dataset.tokens) == "the cat sat the cat"


def test_from_text(tmp_path):
    text = "hello, tokens " * 4
    dataset = TokenDataset.from_text(text, ByteTokenizer(), tmp_path / "text.bin")
    assert dataset.tokens.dtype == np.uint16 and dataset.vocab_size == 256  # ids 0..255; mask 256
    assert ByteTokenizer().decode(dataset.tokens) == text


@pytest.fixture
def dataset(tmp_path):
    write_tokens(tmp_path / "tokens.bin", np.arange(1000) % 251)
    return TokenDataset(tmp_path / "tokens.bin", vocab_size=251)


def test_batch_windows_are_contiguous_slices(dataset):
    batch = dataset.batch(0, batch_size=6, length=20, seed=0)
    assert batch.shape == (6, 20) and batch.dtype == torch.int64
    windows = torch.from_numpy(dataset.tokens.astype(np.int64)).unfold(0, 20, 1)  # [981, 20]
    for row in batch:
        assert (windows == row).all(dim=1).any()


def test_batch_is_a_pure_function_of_seed_step_rank(dataset):
    def batch(step, rank, seed=3):
        return dataset.batch(step, 8, 16, seed=seed, rank=rank, world_size=4)

    assert torch.equal(batch(5, 1), batch(5, 1))
    # a fresh dataset object (a resumed run) sees the same data
    assert torch.equal(TokenDataset(dataset.path, vocab_size=251).batch(5, 8, 16, seed=3, rank=1,
                                                                        world_size=4), batch(5, 1))
    assert not torch.equal(batch(5, 1), batch(6, 1))
    assert not torch.equal(batch(5, 1), batch(5, 2))
    assert not torch.equal(batch(5, 1), batch(5, 1, seed=4))


def test_window_of_whole_file(dataset):
    batch = dataset.batch(0, batch_size=2, length=1000, seed=0)
    assert torch.equal(batch, torch.arange(1000).expand(2, -1) % 251)


@pytest.mark.parametrize("kwargs, name", [
    (dict(step=-1), "step"), (dict(seed=-1), "seed"), (dict(batch_size=0), "batch_size"),
    (dict(length=0), "length"), (dict(length=1001), "length"), (dict(rank=2, world_size=2), "rank"),
])
def test_batch_rejects_bad_arguments(dataset, kwargs, name):
    args = dict(step=0, batch_size=2, length=8, seed=0) | kwargs
    with pytest.raises(ValueError, match=name):
        dataset.batch(args.pop("step"), args.pop("batch_size"), args.pop("length"), **args)


def test_invalid_files_and_ids_raise(tmp_path):
    write_tokens(tmp_path / "tokens.bin", [1, 2, 300])
    with pytest.raises(ValueError, match="vocab_size"):
        TokenDataset(tmp_path / "tokens.bin", vocab_size=257).batch(0, 4, 3, seed=0)
    with pytest.raises(ValueError, match="dtype"):
        TokenDataset(tmp_path / "tokens.bin", dtype="float32")
    with pytest.raises(ValueError, match="holds 6 bytes"):
        TokenDataset(tmp_path / "tokens.bin", dtype="int64")  # 6 bytes: not whole int64 tokens
    with pytest.raises(ValueError, match="fit"):
        write_tokens(tmp_path / "neg.bin", [-1, 2], dtype="uint16")
    with pytest.raises(ValueError, match="ids"):
        write_tokens(tmp_path / "empty.bin", [])
