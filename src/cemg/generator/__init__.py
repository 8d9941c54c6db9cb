"""Generation: a seq2seq backbone over semantic-id tokens and trie-constrained beam search (paper 4.2.4)."""
