"""Optional adapters to other frameworks (MCP, LangChain, LlamaIndex): each module imports its framework, nothing else in the package does."""
