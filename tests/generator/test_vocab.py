import numpy as np
import pytest

from cemg.generator.vocab import SemanticVocabulary


def test_token_layout_puts_specials_first_and_levels_in_blocks():
    vocab = SemanticVocabulary((4, 3, 5))
    assert (vocab.pad_id, vocab.eos_id, vocab.decoder_start_id) == (0, 1, 0)
    assert vocab.size == 2 + 12
    assert vocab.level_offsets().tolist() == [2, 6, 9]
    assert vocab.level_range(2) == (9, 14)
    codes = np.array([[0, 0, 0], [3, 2, 4]])
    assert vocab.item_tokens(codes).tolist() == [[2, 6, 9], [5, 8, 13]]


def test_pretrained_offset_must_clear_specials():
    with pytest.raises(ValueError):
        SemanticVocabulary((4,), offset=1)


def test_histories_become_item_tokens_then_eos_then_padding():
    vocab = SemanticVocabulary((4, 3))
    tokens = vocab.item_tokens(np.array([[0, 0], [1, 2], [3, 1]]))  # items 0, 1, 2
    ids, mask = vocab.encode_histories([np.array([2, 0]), np.array([], np.int64), np.array([0, 1, 2])], tokens, 2)
    # the last 2 items are kept (oldest first); the width is the longest row: 2 items * 2 tokens + eos
    assert ids.tolist() == [
        [5, 7, 2, 6, 1],
        [1, 0, 0, 0, 0],
        [3, 8, 5, 7, 1],
    ]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_history_with_unknown_item_is_an_error():
    vocab = SemanticVocabulary((4,))
    tokens = vocab.item_tokens(np.array([[0], [1]]))
    with pytest.raises(ValueError, match="history 1"):
        vocab.encode_histories([np.array([0]), np.array([5])], tokens, 20)


def test_round_trip_through_dict():
    vocab = SemanticVocabulary((8, 8, 8), offset=32128)
    assert SemanticVocabulary.from_dict(vocab.to_dict()) == vocab
