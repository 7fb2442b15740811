"""UI bridges for `effects` computations. `bridges.live` is the Starlette live bridge."""
