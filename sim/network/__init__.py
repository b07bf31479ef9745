"""The cluster network: its graph and routes (`topology`), the cluster's slow
links applied to it once and memoised (`shared`), flows sharing links
max-min fairly (`flows`), and collectives lowered to flows (`collectives`).
Units: bytes, bytes/s, seconds."""
