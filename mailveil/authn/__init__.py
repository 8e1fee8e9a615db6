"""Is the sender who they claim to be? SPF, DKIM verification and DMARC of incoming mail.

Kept apart from :mod:`mailveil.mail`, which is pure functions on bytes: these checks ask
the DNS, so they live at the edge, next to the SMTP listener that calls them.
"""
