"""Who may act in the console: the sink's principals and tokens live in pipeline.credentials (the
sink's whole operator surface shares them); this name stays for the console's callers."""
from pipeline.credentials import (MIN_TOKEN_CHARS, Credentials, OperatorTokens, Principal, TokenConfigError,
                                  parse_access_tokens, parse_tokens)

__all__ = ["MIN_TOKEN_CHARS", "Credentials", "OperatorTokens", "Principal", "TokenConfigError",
           "parse_access_tokens", "parse_tokens"]
