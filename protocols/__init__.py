"""Sans-I/O protocol codecs: bytes in, typed values out.  No sockets, no asyncio."""
