"""Virus scanning of incoming mail through clamd: no verdict means no acceptance."""
