"""Generated protobuf and gRPC code for the charlstm v1 API (see charlstm.proto)."""
