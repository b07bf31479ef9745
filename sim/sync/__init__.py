"""Data-parallel synchronisation as traffic on the network: the variants of
`parallel.dp_mode` (`variants`), parameter servers (`parameter_server`),
asynchronous SGD (`async_sgd`) and gradient compression (`compression`).
Units: bytes, seconds."""
