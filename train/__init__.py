"""Training, evaluation, prediction and the demo (``crocnet train | evaluate | predict | demo``).

Modules: :mod:`.config` (options), :mod:`.samples` (records → network-frame tensors), :mod:`.losses`,
:mod:`.engine` (the loop: schedule, augmentation, AMP, DDP, logs, atomic checkpoints, resume),
:mod:`.checkpoint`, :mod:`.train` (stage 1 / stage 2 with out-of-fold crops), :mod:`.inference`,
:mod:`.evaluate`, :mod:`.report`, :mod:`.predict`, :mod:`.demo`. No model code lives here.
"""
