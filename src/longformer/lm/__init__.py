"""Character-level autoregressive Longformer (the paper's text8/enwik8 experiment): config, model,
data, staged training, evaluation and incremental generation. Importing it loads no data or model."""
