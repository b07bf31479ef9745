"""Leaf building blocks of the runtime's model, shared by its modules.

attention_core.py (RoPE tables and rotation, the eager causal attention core:
`runtime.model.Attention` and `runtime.mla.LatentAttention` both run them) and
feed_forward.py (the dense MLP, also the MoE block's shared experts). They
import nothing else of the runtime, so the model, MLA and MoE modules can all
depend on them without depending on each other.
"""
