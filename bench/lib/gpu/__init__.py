"""bench/gpu_check's parts: carried wheels (carry), prepared speech and tiny model (assets), the machine and
memory readings (device), and one module per stage (serving: stages 1-2, training: 3, future: 4)."""
