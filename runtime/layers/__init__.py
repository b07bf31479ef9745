"""The building blocks of the runtime's model.

attention_core.py (RoPE tables and rotation, the eager causal attention core:
`runtime.model.Attention` and `runtime.layers.mla.LatentAttention` both run
them) and feed_forward.py (the dense MLP, also the MoE block's shared experts)
are leaves: they import nothing else of the runtime. mla.py (multi-head latent
attention) and moe.py (the mixture-of-experts feed-forward, which dispatches
through `runtime.parallel.expert_dispatch`) build on them; `runtime.model`
assembles the blocks, so none of these imports the model.
"""
