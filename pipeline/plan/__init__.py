"""The ``plan`` stage: a training recipe from the data's fingerprint and the machine, sized to a time budget.

``fingerprint`` (what the training data is), ``machine`` (device, memory, a measured step), ``rules`` (each choice
with one line of why; ``augment`` the augmentation hook), ``budget`` (epochs for the time), ``apply`` (how a plan
merges into a model config, and what wins over it), ``stage`` (the stage's entry: :func:`stage.make_plan`).
"""
