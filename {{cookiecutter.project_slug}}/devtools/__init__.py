"""Development tooling: `make dev`, `make bench`, the fault-drill tasks. Outside the wheel and the image."""
