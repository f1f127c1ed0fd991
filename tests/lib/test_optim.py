"""kexue.optim: BERT's warm-up schedule and AdamW parameter groups."""
import pytest

from kexue.optim import adamw_param_groups, warmup_linear
from kexue.transformer import BertMLM


def test_warmup_linear_schedule():
    assert [warmup_linear(s, 4, 10) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_linear(4, 4, 10) == 1.0
    assert warmup_linear(7, 4, 10) == pytest.approx(0.5)
    assert warmup_linear(10, 4, 10) == 0.0
    assert warmup_linear(0, 0, 10) == 1.0  # no warm-up: full rate from the first step
    assert warmup_linear(5, 0, 10) == pytest.approx(0.5)
    assert warmup_linear(9, 10, 10) == 1.0
    with pytest.raises(ValueError):
        warmup_linear(0, 11, 10)


def test_adamw_param_groups_exempt_layer_norms_and_biases():
    model = BertMLM(10, 1, 8, 2, 16, max_len=4)
    decay, no_decay = adamw_param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    assert id(model.encoder.layers[0].ln2.weight) in ids(no_decay)
    assert id(model.head.bias) in ids(no_decay)
    assert id(model.encoder.tok_emb.weight) in ids(decay)
    assert len(ids(decay)) + len(ids(no_decay)) == len(list(model.parameters()))
