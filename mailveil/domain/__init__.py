"""The rules of the relay as pure values and functions: no I/O, no clock, no database."""
