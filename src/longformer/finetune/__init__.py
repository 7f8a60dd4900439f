"""Fine-tuning Longformer encoders on long documents: classification, extractive QA, token tagging.

Entry points: `longformer finetune` / `longformer predict` (see ``cli.py``) and
``longformer.finetune.train.finetune(FinetuneConfig(...))``. Nothing here loads a model at import.
"""
