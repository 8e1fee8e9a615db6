"""After 250: decide what happens to a stored message, then write the outcome and the outbox
rows in one transaction. Runs in the worker role, never inside the SMTP dialogue."""
