"""Shared fixtures of the library tests."""
import pytest


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one torch thread avoids oversubscription when other jobs share the 2 cores
    (measured here: up to 60× faster than two threads under contention)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def char_tokenizer(tmp_path_factory):
    """``char_tokenizer(text)``: the book's BERT tokenizer (``kexue.models.bert_zh``) over a vocabulary
    of the special tokens and the distinct characters of ``text``."""
    from kexue.models import bert_zh

    def make(text: str):
        d = tmp_path_factory.mktemp("vocab")
        bert_zh.write_vocab(list(bert_zh.SPECIAL_TOKENS) + sorted(set(text)), d)
        return bert_zh.tokenizer(d)
    return make
