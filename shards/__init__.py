"""The shard-set contract (format ``vidshard/1``): schema, writer, reader, verify, serve."""
