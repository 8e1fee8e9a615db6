"""The SMTP edge: asks the rules for a verdict and stores accepted mail before saying 250."""
