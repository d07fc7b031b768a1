"""Triton kernels and their launchers (shipped in the wheel as ``crocnet._triton``)."""
