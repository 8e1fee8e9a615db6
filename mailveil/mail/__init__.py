"""Pure, byte-faithful transformations of mail: MIME splitting, facts, rewriting."""
