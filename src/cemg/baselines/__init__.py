"""Sequential baselines in the same protocol: Popularity, SASRec, GRU4Rec."""
