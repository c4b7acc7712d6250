"""Training: the loop (`loop`), the per-domain tasks and losses (`tasks`), the CPU/GPU fast path (`fastpath`),
the memory budget (`memory`), test/fault hooks (`hooks`) and progress lines (`progress`)."""
