"""Augmentation: the ops registry (schema, limits, draw, search range), the per-image executor
(albumentations), the batched executor on the device, and the keypoint flip."""
