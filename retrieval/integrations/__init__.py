"""Optional adapters to other frameworks (MCP, LangChain, LlamaIndex).

Each module imports its framework; nothing else in the package does."""
