"""Applying a trained model: what training, detection, evaluation and predict share.

Modules: :mod:`.checkpoint` (checkpoints, written atomically and read back), :mod:`.intensity`
(the HU window a model sees), :mod:`.model` (device, loading a checkpoint's model, the crop
model's forward pass) and :mod:`.metrics` (the Dice that picks ``best.pt``).
"""
