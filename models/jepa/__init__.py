"""Multimodal JEPA pretraining (I-JEPA mechanics over CT-patch and EHR tokens across time).

One concept per module: `masks` (which tokens are context and which are targets), `predictor`
(narrow transformer that predicts target embeddings), `model` (context encoder + predictor,
the module DDP wraps), `ema` (target encoder momentum update),
`loss`, `monitor` (collapse statistics), `checkpoint` (atomic save/resume), `distributed`
(torchrun helpers), `probe` (linear-probe AUC sanity check) and `pretrain` (the loop and CLI).
"""
