"""Adapters to other frameworks (LangChain); each imports its framework, nothing else imports them."""
