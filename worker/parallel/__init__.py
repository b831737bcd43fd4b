"""Tensor parallelism: one model across the GPUs of a node (``tensor_parallel_size`` ranks).

- ``group``: the ranks' process group (NCCL on GPUs, gloo on the CPU) and its two collectives.
- ``layers``: the rank's share of the model (heads, MLP columns, vocabulary) and the layers that
  join the shares (row-parallel all-reduce, vocab-parallel embedding and logits).
- ``loading``: each rank reads only its own slices of the checkpoint.
- ``quant_split``: where a quantized tensor holds the rows being split (packed words, groups, scale
  blocks), and the shapes that cannot be split.
- ``runner``: rank 0's runner, which sends each step's plan to the other ranks and samples once.
- ``rank``: the loop a rank > 0 runs in its own process.
"""
