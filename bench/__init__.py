"""Relay benchmark: mailveil against a naive Python relay and Postfix (`python -m bench.relay`)."""
